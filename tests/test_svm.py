"""The linear-SVM benchmark (``training/svm.py``, ``python -m rotnet_jax.svm``)
and VOC features from ``extract`` (``--pool=svm``).

The SVMs are checked against their code's recipe run as it is written
(scikit-learn's LinearSVC with an intercept on the normalised features,
``cross_val_score``), on synthetic features small enough for seconds.
"""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image
from sklearn import exceptions as sklearn_exceptions
from sklearn import model_selection
from sklearn import svm as sklearn_svm

import helpers
import voc_folder
from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax.commands import extract as extract_command
from rotnet_jax.commands import svm as svm_command
from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.inference import extract
from rotnet_jax.inference import model as model_lib
from rotnet_jax.models import heads
from rotnet_jax.training import svm
from rotnet_jax.training import voc_metrics
from rotnet_jax.weights import safetensors_format
from rotnet_jax.weights import types
from rotnet_jax.workdir import lock as workdir_lock

COSTS = (0.01, 1.0, 100.0)


def _targets(rng, count, classes, present=0.35, difficult=0.05):
  """1 / 0 / -1 targets, every class with positives and negatives."""
  draw = rng.random((count, classes))
  targets = np.where(draw < present, 1, -1)
  targets[(draw >= present) & (draw < present + difficult)] = 0
  targets[:3] = 1
  targets[3:6] = -1
  return targets.astype(np.int8)


def _features(rng, targets, dims, signal):
  """Non-negative features: noise, plus `signal` on a direction per class
  where the class is present (or difficult)."""
  directions = rng.random((targets.shape[1], dims))
  return (rng.random((len(targets), dims)) +
          signal * (targets >= 0).astype(np.float64) @ directions)


def _split_pair(seed=0, *, train=90, test=80, classes=3, dims=20, signal=0.4):
  rng = np.random.default_rng(seed)
  train_targets = _targets(rng, train, classes)
  test_targets = _targets(rng, test, classes)
  return (_features(rng, train_targets, dims, signal), train_targets,
          _features(rng, test_targets, dims, signal), test_targets)


def _their_svm(cost):
  """train_svm_kfold.py's classifier (random_state fixed here too)."""
  return sklearn_svm.LinearSVC(
      C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0,
      penalty='l2', loss='squared_hinge', tol=0.0001, dual=True,
      max_iter=2000, random_state=0)


def _their_normalize(features):
  return features / (np.linalg.norm(features, axis=1) + 1e-5)[:, None]


@pytest.mark.parametrize('dims', [20, 150])  # Fewer, then more values
def test_the_recipe_of_their_code(dims):    # than training images.
  # Seed and signal where each class chooses another cost.
  train_x, train_t, test_x, test_t = _split_pair(4, dims=dims, signal=1.0)
  ours = svm.train_and_test(train_x, train_t, test_x, test_t, costs=COSTS)
  x, x_test = _their_normalize(train_x), _their_normalize(test_x)
  scores = np.zeros(test_t.shape)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', sklearn_exceptions.ConvergenceWarning)
    for c in range(train_t.shape[1]):
      # Difficult (0) trains as a negative.
      labels = np.where(train_t[:, c] == 1, 1, -1)
      cross_validated = [model_selection.cross_val_score(
          _their_svm(cost), x, labels, cv=3,
          scoring='average_precision').mean() for cost in COSTS]
      np.testing.assert_allclose(ours['cv_ap'][c], cross_validated,
                                 atol=1e-12)
      chosen = COSTS[int(np.argmax(cross_validated))]
      assert ours['chosen_cost'][c] == chosen
      scores[:, c] = _their_svm(chosen).fit(x, labels).decision_function(
          x_test)
  np.testing.assert_allclose(ours['test_scores'], scores, atol=1e-9)
  expected = voc_metrics.mean_average_precision(scores, test_t)
  for name in ('mAP', 'mAP_11point', 'mAP_all_points'):
    assert ours[name] == pytest.approx(expected[name])
  assert len(set(ours['chosen_cost'])) == 3  # The choice is per class.


def test_separable_features_reach_ap_one_and_a_tie_takes_the_first_cost():
  rng = np.random.default_rng(1)
  train_t, test_t = _targets(rng, 60, 4, difficult=0), _targets(rng, 50, 4)
  # One value per class (1 where present), and a constant 0.5 that keeps
  # an image without any class away from every axis once normalised.
  x = 0.01 * rng.random((60, 5)) + np.pad(train_t == 1, ((0, 0), (0, 1)),
                                            constant_values=0.5)
  x_test = 0.01 * rng.random((50, 5)) + np.pad(
      test_t >= 0, ((0, 0), (0, 1)), constant_values=0.5)
  for costs in ((1.0, 10.0), (10.0, 1.0)):
    result = svm.train_and_test(x, train_t, x_test, test_t, costs=costs)
    for name in ('mAP', 'mAP_11point', 'mAP_all_points'):
      assert result[name] == pytest.approx(1.0)
    # Cross-validation is perfect at both costs: np.argmax's first wins.
    assert np.asarray(result['cv_ap']) == pytest.approx(1.0)
    assert result['chosen_cost'] == [costs[0]] * 4


def test_random_labels_score_about_chance():
  rng = np.random.default_rng(2)
  train_t, test_t = _targets(rng, 150, 4, 0.3), _targets(rng, 400, 4, 0.3)
  result = svm.train_and_test(rng.random((150, 30)), train_t,
                              rng.random((400, 30)), test_t, costs=COSTS)
  chance = np.mean([np.mean(test_t[test_t[:, c] != 0, c] == 1)
                    for c in range(4)])
  assert abs(result['mAP'] - chance) < 0.08, (result['mAP'], chance)


def test_difficult_test_images_are_left_out():
  train_x, train_t, test_x, test_t = _split_pair()
  test_t[7] = 0  # Difficult for every class: any score, the same APs.
  first = svm.train_and_test(train_x, train_t, test_x, test_t, costs=COSTS)
  test_x[7] = 50 * test_x.max()
  second = svm.train_and_test(train_x, train_t, test_x, test_t, costs=COSTS)
  assert first['test_scores'][7].tolist() != second['test_scores'][7].tolist()
  assert first['ap'] == second['ap']
  assert first['ap_11point'] == second['ap_11point']


def test_a_class_without_enough_positives_to_cross_validate():
  train_x, train_t, test_x, test_t = _split_pair()
  train_t[:, 1] = -1
  train_t[:2, 1] = 1
  with pytest.raises(InputError, match=r'class 1 \(b\) has 2 positive'):
    svm.train_and_test(train_x, train_t, test_x, test_t, costs=COSTS,
                       class_names=('a', 'b', 'c'))
  with pytest.raises(InputError, match='values per image'):
    svm.train_and_test(train_x, train_t, test_x[:, :5], test_t)
  with pytest.raises(InputError, match='positive numbers'):
    svm.train_and_test(train_x, train_t, test_x, test_t, costs=(0.0,))


# Low-shot.


def test_low_shot_draws_exactly_k_positives_per_class():
  rng = np.random.default_rng(3)
  targets = _targets(rng, 300, 3, present=0.3)
  drawn = svm.draw_low_shot(targets, shots=(1, 4, 8), samples=3, seed=5)
  assert sorted(drawn) == [(s, k) for s in (1, 2, 3) for k in (1, 4, 8)]
  for (_, k), per_class in drawn.items():
    for c, indices in enumerate(per_class):
      assert len(set(indices)) == len(indices) == 3 * k
      assert np.sum(targets[indices, c] == 1) == k
      assert np.sum(targets[indices, c] == -1) == 2 * k  # (C - 1) k.
  # Independent samples; the seed decides them.
  assert not np.array_equal(drawn[1, 8][0], drawn[2, 8][0])
  again = svm.draw_low_shot(targets, shots=(1, 4, 8), samples=3, seed=5)
  assert all(np.array_equal(a, b) for key in drawn
             for a, b in zip(drawn[key], again[key]))
  other = svm.draw_low_shot(targets, shots=(8,), samples=1, seed=6)
  assert not np.array_equal(other[1, 8][0], drawn[1, 8][0])
  targets[:, 2] = np.where(np.arange(300) < 5, 1, -1)
  with pytest.raises(InputError, match=r'class 2 has 5 present .* k=8'):
    svm.draw_low_shot(targets, shots=(1, 8))


def test_low_shot_is_their_recipe_on_each_sample():
  train_x, train_t, test_x, test_t = _split_pair(4, train=120, dims=30)
  shots, costs = (1, 3), (0.1, 10.0)
  # Seed 0: liblinear's too, as _their_svm's random_state.
  result = svm.low_shot(train_x, train_t, test_x, test_t, shots=shots,
                        samples=2, seed=0, costs=costs)
  drawn = svm.draw_low_shot(train_t, shots=shots, samples=2, seed=0)
  x, x_test = _their_normalize(train_x), _their_normalize(test_x)
  for k in shots:
    expected = np.zeros((2, len(costs)))
    for sample in (1, 2):
      for index, cost in enumerate(costs):
        scores = np.zeros(test_t.shape)
        for c, rows in enumerate(drawn[sample, k]):
          labels = np.where(train_t[rows, c] == 1, 1, -1)
          scores[:, c] = _their_svm(cost).fit(
              x[rows], labels).decision_function(x_test)
        expected[sample - 1, index] = voc_metrics.mean_average_precision(
            scores, test_t)['mAP']
    np.testing.assert_allclose(result['per_cost'][k]['mAP'], expected,
                               atol=1e-9)
    # The reported cost: the best mean over the samples (on test).
    best = int(np.argmax(expected.mean(axis=0)))
    summary = result['shots'][k]['mAP']
    assert summary['cost'] == costs[best]
    assert summary['mean'] == pytest.approx(expected[:, best].mean())
    assert summary['std'] == pytest.approx(expected[:, best].std())
    assert summary['min'] <= summary['mean'] <= summary['max']


def test_low_shot_reports_the_cost_of_the_best_mean_by_hand():
  # Sample 1 is best at cost 0.1, but the mean is best at cost 10.
  values = [[0.9, 0.6],
            [0.1, 0.7]]
  assert svm.aggregate_samples(values, (0.1, 10.0)) == pytest.approx(
      {'mean': 0.65, 'std': 0.05, 'min': 0.6, 'max': 0.7, 'cost': 10.0})


# Files of extract, and the command line.


def _write_npz(path, blocks, targets, **extra):
  np.savez(path, blocks=np.asarray(list(blocks)), targets=targets,
           class_names=np.asarray(['a', 'b', 'c'][:targets.shape[1]]),
           **blocks, **extra)
  return str(path)


@pytest.fixture()
def feature_files(tmp_path):
  """trainval.npz and test.npz with blocks conv1 ([N, 2, 2, 5]) and
  conv2 ([N, 12])."""
  train_x, train_t, test_x, test_t = _split_pair(dims=20)
  train = _write_npz(tmp_path / 'trainval.npz', {
      'conv1': train_x.reshape(-1, 2, 2, 5).astype(np.float32),
      'conv2': train_x[:, :12].astype(np.float32)}, train_t)
  test = _write_npz(tmp_path / 'test.npz', {
      'conv1': test_x.reshape(-1, 2, 2, 5).astype(np.float32),
      'conv2': test_x[:, :12].astype(np.float32)}, test_t)
  return train, test, (train_x, train_t, test_x, test_t)


def test_benchmark_files_runs_every_block(feature_files, tmp_path):
  train, test, (train_x, train_t, test_x, test_t) = feature_files
  out = str(tmp_path / 'svm.json')
  results = svm.benchmark_files(train, test, costs=COSTS, out=out,
                                low_shot=True, shots=(1, 2), samples=2)
  with open(out) as f:
    assert json.load(f) == results
  assert list(results['blocks']) == ['conv1', 'conv2']
  assert results['classes'] == ['a', 'b', 'c']
  direct = svm.train_and_test(train_x.astype(np.float32), train_t,
                              test_x.astype(np.float32), test_t, costs=COSTS)
  conv1 = results['blocks']['conv1']
  assert conv1['features'] == 20
  assert conv1['full']['mAP'] == pytest.approx(direct['mAP'])
  assert conv1['full']['chosen_cost'] == direct['chosen_cost']
  assert 'test_scores' not in conv1['full']
  assert set(conv1['low_shot']['shots']) == {'1', '2'}
  assert results['blocks']['conv2']['features'] == 12
  only = svm.benchmark_files(train, test, blocks=['conv2'], costs=COSTS)
  assert list(only['blocks']) == ['conv2']


def test_bad_feature_files_one_error_each_and_nothing_written(
    feature_files, tmp_path):
  train, test, (train_x, train_t, test_x, test_t) = feature_files
  out = str(tmp_path / 'svm.json')

  def refused(pattern, train_file=train, test_file=test, **kwargs):
    with pytest.raises(InputError, match=pattern):
      svm.benchmark_files(train_file, test_file, costs=COSTS, out=out,
                          **kwargs)
    assert not os.path.exists(out)

  refused(r"block 'conv3' is not in --train=.*, which has conv1, conv2",
          blocks=['conv3'])
  smaller = _write_npz(tmp_path / 'smaller.npz', {
      'conv1': test_x[:, :8].reshape(-1, 2, 2, 2), 'conv2': test_x[:, :12]},
                       test_t)
  refused(r"block 'conv1' has 20 values per image in --train .* and 8 in "
          '--test', test_file=smaller)
  other = _write_npz(tmp_path / 'other.npz', {'conv2': test_x[:, :12]},
                     test_t)
  refused(r"block 'conv1' is not in --test=.*other.npz', which has conv2",
          test_file=other)
  labels = tmp_path / 'labels.npz'
  np.savez(labels, blocks=np.asarray(['conv1']), conv1=test_x,
           labels=np.zeros(len(test_x), np.int32))
  refused(r"has no VOC classification 'targets' \(it has 'labels'",
          test_file=str(labels))
  two = _write_npz(tmp_path / 'two.npz', {'conv1': test_x.reshape(
      -1, 2, 2, 5), 'conv2': test_x[:, :12]}, test_t[:, :2])
  refused('--train has 3 classes', test_file=two)
  with pytest.raises(MissingInputError, match='does not exist'):
    svm.benchmark_files(str(tmp_path / 'none.npz'), test, out=out)
  (tmp_path / 'broken.npz').write_bytes(b'not a zip')
  refused('is not a readable .npz file', str(tmp_path / 'broken.npz'))
  refused(r'class 0 \(a\) has \d+ present .* k=50', low_shot=True,
          shots=(1, 50))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with workdir_lock.lock(str(workdir)):
    with pytest.raises(InputError, match='is inside the workdir'):
      svm.benchmark_files(train, test, out=str(workdir / 'svm.json'))
  assert os.listdir(workdir) == []
  with open(out, 'w') as f:
    f.write('keep')
  with pytest.raises(InputError, match='already exists'):
    svm.benchmark_files(train, test, out=out)


def _command(*args):
  env = helpers.one_device_env(PYTHONPATH=helpers.REPO_ROOT,
                               JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'rotnet_jax.svm', *args],
                        capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # Two processes; the same path in-process: test_benchmark_files_runs_every_block.
def test_the_command_end_to_end(feature_files, tmp_path):
  train, test, _ = feature_files
  out = tmp_path / 'svm.json'
  costs = ','.join(str(c) for c in COSTS)
  result = _command(f'--train={train}', f'--test={test}', f'--out={out}',
                    f'--costs={costs}', '--jobs=1', '--blocks=conv2')
  assert result.returncode == 0, result.stderr
  expected = svm.benchmark_files(train, test, blocks=['conv2'], costs=COSTS)
  saved = json.loads(out.read_text())
  assert saved['blocks']['conv2']['full']['mAP'] == pytest.approx(
      expected['blocks']['conv2']['full']['mAP'])
  lines = result.stdout.splitlines()
  assert lines[0].split()[:3] == ['block', 'mAP', '11-pt']
  mean_ap = 100 * expected['blocks']['conv2']['full']['mAP']
  assert lines[1].split()[:2] == ['conv2', f'{mean_ap:.2f}']
  assert lines[-1] == f'wrote {out}'
  # Bad input: one error line, status 2, nothing written.
  result = _command(f'--train={train}', f'--test={test}', '--blocks=conv9',
                    f'--out={tmp_path / "other.json"}')
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and "block 'conv9'" in errors[0], result.stderr
  assert not (tmp_path / 'other.json').exists()


@pytest.mark.slow  # Starts two worker processes (the fast tier fits in
def test_jobs_change_nothing():  # one: test_the_recipe_of_their_code).
  train_x, train_t, test_x, test_t = _split_pair(dims=150)
  one = svm.train_and_test(train_x, train_t, test_x, test_t, costs=COSTS)
  two = svm.train_and_test(train_x, train_t, test_x, test_t, costs=COSTS,
                           jobs=2)
  np.testing.assert_array_equal(one['test_scores'], two['test_scores'])
  shot = dict(shots=(1, 2), samples=2, costs=COSTS)
  assert (svm.low_shot(train_x, train_t, test_x, test_t, **shot)['per_cost']
          == svm.low_shot(train_x, train_t, test_x, test_t, jobs=2,
                          **shot)['per_cost'])


# VOC in extract.


def _numpy_adaptive_average(x, size):
  def windows(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
  out = np.zeros((x.shape[0], size, size, x.shape[3]))
  for i, (r0, r1) in enumerate(windows(x.shape[1])):
    for j, (c0, c1) in enumerate(windows(x.shape[2])):
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize('side, size', [(55, 12), (27, 7), (13, 5), (13, 6),
                                        (8, 7), (5, 5)])
def test_adaptive_average_pool_windows(side, size):
  x = np.random.default_rng(side).random((2, side, side, 3))
  np.testing.assert_allclose(
      np.asarray(heads.adaptive_average_pool(x, size)),
      _numpy_adaptive_average(x, size), rtol=1e-6)


def test_svm_pool_sides_give_about_9216_values():
  model = config_schema.defaults().model
  model.name = 'alexnet'
  spec = models.backbone_spec(model, image_size=224, num_classes=4)
  assert model_lib.svm_pool_sides(spec) == {
      'conv1': 12, 'conv2': 7, 'conv3': 5, 'conv4': 6, 'conv5': 6,
      'fc_block': 1}
  model.name, model.num_blocks = 'nin', 4
  spec = models.backbone_spec(model, image_size=32, num_classes=4)
  sides = model_lib.svm_pool_sides(spec)
  assert sides == {'conv1': 10, 'conv2': 7, 'conv3': 7, 'conv4': 7}
  for block, (_, _, channels) in models.feature_shapes(spec).items():
    assert 9000 <= sides[block] ** 2 * channels <= 9600


def test_pool_flag_keeps_its_boolean_spelling():
  for argv, expected in ((['x'], 'none'), (['x', '--pool'], 'global'),
                         (['x', '--nopool'], 'none'),
                         (['x', '--pool=svm'], 'svm'),
                         (['x', '--pool=global'], 'global')):
    values = flags.FlagValues()
    values['pool'] = extract_command.pool_flag()
    values(argv)
    assert values.pool == expected, argv
  values = flags.FlagValues()
  values['pool'] = extract_command.pool_flag()
  with pytest.raises(flags.IllegalFlagValueError, match='none, global, svm'):
    values(['x', '--pool=max'])
  with pytest.raises(InputError, match="pool='max'"):
    model_lib.pool_mode('max')


def test_svm_resize_squashes_the_whole_image():
  # A wide image whose left quarter is red: a centre crop would lose it.
  pixels = np.zeros((60, 240, 3), np.uint8)
  pixels[:, :60] = (255, 0, 0)
  pixels[:, 60:] = (0, 0, 255)
  resized = extract.svm_resize(Image.fromarray(pixels), 32)
  assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
  red = resized[:, :, 0] > 128
  assert red[:, :7].all() and not red[:, 9:].any()
  # Through a shorter side of round(32 * 256 / 224) = 37 first.
  two_step = Image.fromarray(pixels).resize((148, 37), Image.BILINEAR)
  np.testing.assert_array_equal(
      resized, np.asarray(two_step.resize((32, 32), Image.BILINEAR)))


@pytest.fixture(scope='module')
def alexnet_file(tmp_path_factory):
  """A random full-width AlexNet at 64 pixels, exported (conv1 is 15 x 15
  there, pooled to 12 x 12)."""
  model = config_schema.defaults().model
  model.name = 'alexnet'
  spec = models.backbone_spec(model, image_size=64, num_classes=4)
  variables = jax.tree.map(
      np.asarray, jax.jit(lambda: models.init_variables(spec, 0))())
  weights = types.Weights(spec, variables, {
      'pretrained': 'test', 'pretrained_format': 'test',
      'pretrained_step': None})
  return safetensors_format.write(
      weights, str(tmp_path_factory.mktemp('alexnet') / 'a.safetensors'))


@pytest.mark.slow  # A network and two extractions; the pooling: test_adaptive_average_pool_windows, extract itself: test_inference.py::test_extract_writes_the_split.
def test_extract_voc_for_the_svm_benchmark(alexnet_file, tmp_path):
  devkit = voc_folder.write_vocdevkit(str(tmp_path / 'voc'),
                                      images_per_class=6)
  outs = {}
  for split in ('trainval', 'test'):
    outs[split] = str(tmp_path / f'{split}.npz')
    summary = extract.extract_split(
        pretrained=alexnet_file, dataset=devkit, split=split,
        blocks=('conv1', 'conv2'), out=outs[split], pool='svm')
  opened = voc.open_classification(devkit, 'test')
  assert summary['images'] == len(opened) == 60
  with np.load(outs['test']) as saved:
    assert sorted(saved.files) == ['blocks', 'class_names', 'conv1', 'conv2',
                                   'ids', 'targets']
    np.testing.assert_array_equal(saved['targets'], opened.targets)
    assert saved['targets'].dtype == np.int8
    assert saved['class_names'].tolist() == list(voc.CLASSES)
    assert saved['ids'].tolist() == list(opened.ids)
    assert saved['conv1'].shape == (60, 12, 12, 64)
    assert saved['conv2'].shape == (60, 7, 7, 192)
    conv1 = saved['conv1'][:5]
  # The same as the model's own features of the resized images.
  model = model_lib.load(alexnet_file)
  images = np.stack([extract.svm_resize(Image.open(path), 64)
                     for path in opened.paths[:5]])
  maps = model.features(images, ('conv1',), pool='none')['conv1']
  np.testing.assert_allclose(conv1, _numpy_adaptive_average(maps, 12),
                             rtol=1e-4, atol=1e-5)
  # The benchmark reads them (a few costs, two folds: 3 positives of
  # some classes).
  results = svm.benchmark_files(outs['trainval'], outs['test'],
                                blocks=['conv2'], costs=(0.1, 10.0), folds=2)
  full = results['blocks']['conv2']['full']
  assert results['classes'] == list(voc.CLASSES)
  assert len(full['ap']) == 20 and 0 <= full['mAP'] <= 1


class _Flags:
  """What settings_from_flags reads of absl's FLAGS: flags by name (a
  value, and whether the command line gave it) and ``config``."""

  def __init__(self, config, **given):
    self.config = config
    defaults = dict(blocks=[], low_shot=False,
                    costs=[repr(c) for c in svm.COSTS], folds=svm.FOLDS,
                    shots=[str(k) for k in svm.SHOTS], samples=svm.SAMPLES,
                    seed=0)
    self._flags = {name: type('Flag', (), dict(
        value=given.get(name, value), present=int(name in given)))()
                   for name, value in defaults.items()}

  def __getitem__(self, name):
    return self._flags[name]


def _shipped_config(name):
  path = os.path.join(helpers.REPO_ROOT, 'configs', name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_a_config_file_sets_the_defaults_and_a_given_flag_wins():
  low_shot = _shipped_config('voc07_svm_low_shot.py')
  settings = svm_command.settings_from_flags(_Flags(low_shot))
  assert settings['low_shot'] is True
  assert settings['costs'] == list(svm.COSTS)
  assert settings['shots'] == list(svm.SHOTS)
  settings = svm_command.settings_from_flags(
      _Flags(low_shot, low_shot=False, folds=5, shots=['1', '2']))
  assert settings['low_shot'] is False and settings['folds'] == 5
  assert settings['shots'] == [1, 2]
  assert svm_command.settings_from_flags(
      _Flags(_shipped_config('voc07_svm.py')))['low_shot'] is False
  assert svm_command.settings_from_flags(_Flags(None))['low_shot'] is False


def test_a_config_file_that_is_not_a_linear_svm_config_is_refused():
  with pytest.raises(InputError, match="config.benchmark=None: a linear-SVM "
                     "config says 'voc07_svm'"):
    svm_command.settings_from_flags(_Flags(_shipped_config('cifar.py')))
  bad = svm.settings()
  bad.folds = 1
  with pytest.raises(InputError, match='config.folds=1'):
    svm_command.settings_from_flags(_Flags(bad))
