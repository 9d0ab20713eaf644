"""mode='transfer': a pretrained AlexNet fine-tuned on PASCAL VOC.

The networks (``models/transfer.py``), the objective's losses, sums and
test crops (``training/objectives.VOCTransfer``), the step schedule and
clipping (``training/optim.py``), the config's rules, and tiny runs end to
end on a generated VOCdevkit folder (``tests/voc_folder.py``).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import helpers
import voc_folder
from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import voc
from rotnet_jax.errors import ConfigError
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import plots
from rotnet_jax.models import alexnet
from rotnet_jax.models import transfer
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import train
from rotnet_jax.training import validation
from rotnet_jax.weights import restore

SPEC = {'name': 'alexnet', 'num_classes': 4, 'num_blocks': 5,
        'width': 1 / 16, 'image_size': 64}


@pytest.fixture(scope='module')
def devkit(tmp_path_factory):
  return voc_folder.write_vocdevkit(str(tmp_path_factory.mktemp('voc')))


def tiny_transfer_config(devkit, task='voc_classification', **overrides):
  """A random 1/16-width AlexNet fine-tuned for 2 epochs of 4 images."""
  config = config_schema.transfer_defaults(task)
  config.dataset = devkit
  if task == 'voc_segmentation':
    config.train_split, config.test_split = 'train', 'val'
    config.transfer_image_size = 80
  config.pretrained = 'random'
  config.model.name = 'alexnet'
  config.model.num_blocks = 5
  config.model.width = 1 / 16
  config.model.bn_scale_init = 'ones'
  config.image_size = 64
  config.batch_size = 4
  config.num_epochs = 2
  config.learning_rate_steps_table = ((100, 0.01),)
  config.test_crops = 2
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.log_every_steps = 2
  config.update_from_flattened_dict(overrides)
  return config


def _restored(seed=0):
  variables = models.init_variables(SPEC, seed)
  return restore.RestoredBackbone(SPEC, variables, {'pretrained': 'random'})


def _objective(task='voc_classification', frozen_up_to='', **overrides):
  config = config_schema.transfer_defaults(task)
  config.frozen_up_to = frozen_up_to
  config.update_from_flattened_dict(overrides)
  return objectives.VOCTransfer(config, _restored())


# The networks.


def test_fc6_as_a_convolution_is_fc6_on_the_pool5_window():
  """FCN-32s' fc6 kernel is the fc6 matrix: at the position whose window
  is the whole pool5 map of an image_size input, the two agree."""
  fcn = transfer.AlexNetFCN32s(dict(SPEC, image_size=96), 21,
                               rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(1), (2, 96, 96, 3))
  pool5 = transfer.conv_blocks(fcn.alexnet, images, train=False)
  side = alexnet.feature_sides(96)['pool5']
  assert pool5.shape[1:3] == (side, side) and side == 2
  fc = fcn.alexnet.fc_block.linear1(alexnet.flatten_pool5(pool5))
  kernel = fcn.alexnet.fc_block.linear1.kernel[...].reshape(
      side, side, pool5.shape[-1], -1)
  conv = jax.lax.conv_general_dilated(
      pool5, kernel, (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # 'SAME' pads (side - 1) // 2 before: position 0 of a 2x2 map sees it all.
  np.testing.assert_allclose(conv[:, 0, 0], fc, rtol=1e-5, atol=1e-5)


def test_fcn_scores_have_the_input_size_and_start_at_zero():
  fcn = transfer.AlexNetFCN32s(SPEC, 21, rngs=nnx.Rngs(0))
  scores = fcn(jnp.ones((2, 70, 90, 3)), train=False)
  assert scores.shape == (2, 70, 90, 21)
  # The score layer starts at zero (FCN's initialisation).
  np.testing.assert_array_equal(scores, 0.0)
  assert not hasattr(fcn.alexnet, 'classifier')


def test_the_new_classifier_is_drawn_from_n_0_0_01():
  net = transfer.AlexNetClassifier(dict(SPEC, width=0.25, image_size=64), 20,
                                   rngs=nnx.Rngs(0))
  kernel = np.asarray(net.alexnet.classifier.kernel[...])
  assert kernel.shape == (1024, 20)
  assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
  np.testing.assert_array_equal(net.alexnet.classifier.bias[...], 0.0)


def test_frozen_blocks_run_in_inference_mode():
  net = transfer.AlexNetClassifier(SPEC, 20, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(2), (4, 64, 64, 3))
  frozen_train = transfer.conv_blocks(net.alexnet, images, train=True,
                                      frozen_up_to='conv5')
  inference = transfer.conv_blocks(net.alexnet, images, train=False)
  np.testing.assert_allclose(frozen_train, inference, rtol=1e-6)
  trained = transfer.conv_blocks(net.alexnet, images, train=True)
  assert not np.allclose(trained, inference, atol=1e-3)


@pytest.mark.slow  # Two gradients of the network, eagerly (about 9 s).
def test_nothing_flows_back_through_frozen_blocks():
  net = transfer.AlexNetClassifier(SPEC, 20, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(2), (4, 64, 64, 3))

  def first_conv_gradient(frozen_up_to):
    graphdef, state = nnx.split(net)

    def loss(state):
      model = nnx.merge(graphdef, state)
      return jnp.sum(model(images, train=False, frozen_up_to=frozen_up_to))
    grads = jax.grad(loss)(state)
    return np.abs(np.asarray(grads['alexnet']['conv1']['conv']['kernel'][
        ...])).sum()

  assert first_conv_gradient('conv1') == 0.0
  assert first_conv_gradient('') > 0.0


def test_frozen_up_to_names_a_convolutional_block():
  assert transfer.frozen_blocks('conv3') == ('conv1', 'conv2', 'conv3')
  assert transfer.frozen_blocks('') == ()
  with pytest.raises(ConfigError, match="frozen_up_to='fc_block'"):
    transfer.frozen_blocks('fc_block')


# The objective.


def test_trained_variables_start_as_the_backbone_without_its_frozen_part():
  objective = _objective(frozen_up_to='conv3')
  params, batch_stats = objective.init(0, objective.constants)
  assert sorted(params['alexnet']) == ['classifier', 'conv4', 'conv5',
                                       'fc_block']
  assert sorted(batch_stats['alexnet']) == ['conv4', 'conv5', 'fc_block']
  restored = objective.constants
  for kind, tree in (('params', params), ('batch_stats', batch_stats)):
    for block in ('conv4', 'conv5', 'fc_block'):
      jax.tree.map(np.testing.assert_array_equal, tree['alexnet'][block],
                   restored[kind][block])
  assert params['alexnet']['classifier']['kernel'].shape[-1] == 20


def test_frozen_batch_statistics_do_not_change_in_training():
  objective = _objective(frozen_up_to='conv2')
  params, batch_stats = objective.init(0, objective.constants)
  batch = {'image': jax.random.normal(jax.random.key(0), (4, 64, 64, 3)),
           'label': jnp.zeros((4, 20), jnp.int8),
           'mask': jnp.ones((4,))}
  output = objective.apply(params, batch_stats, objective.constants, batch,
                           0, train=True)
  assert sorted(output.batch_stats['alexnet']) == ['conv3', 'conv4',
                                                   'conv5', 'fc_block']
  # The trained blocks' statistics moved.
  assert not np.allclose(output.batch_stats['alexnet']['conv3']['norm']
                         ['mean'], batch_stats['alexnet']['conv3']['norm']
                         ['mean'])


def test_test_crops_are_averaged():
  objective = _objective()
  params, batch_stats = objective.init(0, objective.constants)
  crops = jax.random.normal(jax.random.key(3), (2, 3, 64, 64, 3))

  def logits(images):
    batch = {'image': images, 'label': jnp.zeros((len(images), 20),
                                                  jnp.int8),
             'mask': jnp.ones((len(images),))}
    return objective.apply(params, batch_stats, objective.constants, batch,
                           0, train=False).logits['voc_classification']

  each = np.stack([logits(crops[:, k]) for k in range(3)], axis=1)
  np.testing.assert_allclose(logits(crops), each.mean(axis=1), rtol=1e-5,
                             atol=1e-6)


def test_the_multilabel_loss_leaves_ignored_classes_out():
  objective = _objective()
  logits = jnp.array([[2.0, -1.0, 0.5] + [0.0] * 17])
  targets = jnp.array([[1, -1, 0] + [-1] * 17], jnp.int8)
  output = objectives.Output({'voc_classification': logits}, targets,
                             jnp.ones((1,)), {})
  loss = objective.losses(output)['voc_classification']

  def bce(x, positive):
    return np.log1p(np.exp(-x)) if positive else np.log1p(np.exp(x))

  # Class 2 (target 0: difficult only) counts for nothing.
  expected = bce(2.0, True) + bce(-1.0, False) + 17 * bce(0.0, False)
  np.testing.assert_allclose(loss, [expected], rtol=1e-5)


def test_the_segmentation_loss_and_confusion_skip_ignored_pixels():
  objective = _objective('voc_segmentation')
  logits = jnp.zeros((2, 2, 2, 21)).at[..., 3].set(5.0)
  labels = jnp.array([[[3, 255], [0, 255]], [[3, 3], [3, 3]]], jnp.uint8)
  weights = jnp.array([1.0, 0.0])  # The second image is padding.
  output = objectives.Output({'voc_segmentation': logits}, labels, weights,
                             {})
  losses = objective.losses(output)
  log_z = np.log(20 + np.exp(5.0))
  # Image 0: one pixel of class 3 (loss log_z - 5), one of class 0 (log_z).
  np.testing.assert_allclose(losses['voc_segmentation'][0],
                             (log_z - 5.0 + log_z) / 2, rtol=1e-5)
  sums = objective.metric_sums(output, losses, train=False)[
      'voc_segmentation']
  confusion = np.asarray(sums['confusion'])
  assert confusion.sum() == 2  # Two scored pixels; padding counts none.
  assert confusion[3, 3] == 1 and confusion[0, 3] == 1
  assert float(sums['count']) == 1.0


def test_classification_sums_keep_scores_for_the_test_split_only():
  objective = _objective()
  output = objectives.Output(
      {'voc_classification': jnp.zeros((2, 20))},
      jnp.zeros((2, 20), jnp.int8), jnp.ones((2,)), {})
  losses = objective.losses(output)
  assert 'scores' not in objective.metric_sums(output, losses, train=True)[
      'voc_classification']
  test = objective.metric_sums(output, losses, train=False)[
      'voc_classification']
  assert test['scores'].shape == (2, 20) and test['targets'].shape == (2, 20)


# Optimiser.


def test_the_step_table_halves_the_rate_every_10000_iterations():
  schedule = optim.step_table_schedule(
      config_schema.VOC_CLASSIFICATION_STEP_TABLE)
  assert float(schedule(0)) == pytest.approx(0.001)
  assert float(schedule(9_999)) == pytest.approx(0.001)
  assert float(schedule(10_000)) == pytest.approx(0.0005)
  assert float(schedule(79_999)) == pytest.approx(0.001 / 128)
  config = config_schema.transfer_defaults('voc_classification')
  # 256 epochs of 313 steps: the table's 80,000 iterations, and 128 more.
  assert config.num_epochs * (5011 // config.batch_size) == 80_128
  assert float(optim.schedule(config, 313)(10_000)) == pytest.approx(0.0005)


def test_gradients_are_clipped_to_the_global_norm():
  tx = optim.sgd(1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                 clip_norm=10.0)
  params = {'w': jnp.zeros(2)}
  grads = {'w': jnp.array([30.0, 40.0])}  # Norm 50.
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], [-6.0, -8.0], rtol=1e-6)
  small = {'w': jnp.array([3.0, 4.0])}
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], [-3.0, -4.0], rtol=1e-6)


# Config.


def test_transfer_needs_a_voc_dataset(devkit):
  config = tiny_transfer_config(devkit)
  config.dataset = 'cifar10'
  with pytest.raises(ConfigError, match="config.dataset='cifar10'"):
    validation.check_config(config)


def test_transfer_needs_an_alexnet(devkit):
  config = tiny_transfer_config(devkit)
  config.model.name = 'nin'
  config.model.num_blocks = 4
  config.image_size = 32
  with pytest.raises(ConfigError, match="config.model.name='nin'"):
    validation.check_config(config)


def test_frozen_up_to_is_checked(devkit):
  config = tiny_transfer_config(devkit, frozen_up_to='fc_block')
  with pytest.raises(ConfigError, match="config.frozen_up_to='fc_block'"):
    validation.check_config(config)


# End to end.


def _run(config, workdir):
  """A run on one device: the generated splits hold fewer images than
  the session's 8 fake devices need for a batch."""
  return train.train_and_evaluate(config, str(workdir),
                                  mesh=parallel.make_mesh(jax.devices()[:1]))


def _events(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_classification_end_to_end(devkit, tmp_path):
  """Two epochs of fc6-8 fine-tuning: mAP in the results and logs, the
  training loss falls, and a rerun resumes with nothing left to do."""
  workdir = str(tmp_path / 'cls')
  config = tiny_transfer_config(devkit, frozen_up_to='conv5')
  _run(config, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  (head,) = results['heads']
  assert head['head'] == 'voc_classification' and head['metric'] == 'mAP'
  assert 0.0 < head['final_test_mAP'] <= 1.0
  assert head['frozen_up_to'] == 'conv5'
  split = voc.open_classification(devkit, 'test')
  assert head['test_samples'] == len(split)
  tests = [e for e in _events(workdir) if e['split'] == 'test']
  assert len(tests) == 2
  assert all(0 < e['mAP'] <= 1 and 0 < e['mAP_11point'] <= 1
             for e in tests)
  assert 'accuracy' not in tests[0]
  trains = [e for e in _events(workdir) if e['split'] == 'train']
  assert trains and all(np.isfinite(e['loss']) for e in trains)
  # Its training curves plot the head's metric.
  figure = plots.training_curves(workdir)
  titles = [ax.get_title() for ax in figure.axes]
  assert 'voc_classification: mAP' in titles
  assert len(figure.axes[1].get_lines()) == 1  # Test points only.
  before = os.path.getmtime(os.path.join(workdir, 'results.json'))
  _run(config, workdir)  # Complete: nothing to do.
  assert len([e for e in _events(workdir) if e['split'] == 'test']) == 2
  assert os.path.getmtime(os.path.join(workdir, 'results.json')) >= before


@pytest.mark.slow  # About 40 s; the fast tier runs a 2-epoch run above.
def test_the_multilabel_network_learns_its_training_images(devkit, tmp_path):
  """Every layer trained on trainval, tested on trainval: the loss falls
  and the mAP beats the untrained network's.

  The generated images are noise, so this is memorisation, and slow: 25
  epochs of 5 steps take mAP from 0.17 to 0.37 (seed 0, measured)."""
  config = tiny_transfer_config(
      devkit, test_split='trainval', num_epochs=25, test_crops=1,
      scale_range=(1.0, 1.0), eval_every_epochs=25,
      learning_rate_steps_table=((1000, 0.05),), weight_decay=0.0)
  _run(tiny_transfer_config(devkit, test_split='trainval', num_epochs=1,
                            test_crops=1, scale_range=(1.0, 1.0),
                            learning_rate_steps_table=((1000, 0.0),)),
       str(tmp_path / 'untrained'))
  _run(config, str(tmp_path / 'trained'))
  with open(tmp_path / 'untrained' / 'results.json') as f:
    chance = json.load(f)['heads'][0]['final_test_mAP']
  with open(tmp_path / 'trained' / 'results.json') as f:
    learned = json.load(f)['heads'][0]['final_test_mAP']
  losses = [e['loss'] for e in _events(str(tmp_path / 'trained'))
            if e['split'] == 'train']
  assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:3])
  assert learned > chance + 0.1, (chance, learned)


@pytest.mark.slow  # About 8 s; classification end to end stays in the fast tier.
def test_segmentation_end_to_end(devkit, tmp_path):
  workdir = str(tmp_path / 'seg')
  config = tiny_transfer_config(devkit, 'voc_segmentation')
  _run(config, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    (head,) = json.load(f)['heads']
  assert head['metric'] == 'mIoU' and 0.0 <= head['final_test_mIoU'] <= 1.0
  tests = [e for e in _events(workdir) if e['split'] == 'test']
  assert all('mIoU' in e and 'pixel_accuracy' in e for e in tests)
  trains = [e for e in _events(workdir) if e['split'] == 'train']
  assert all('mIoU' in e for e in trains)


@pytest.mark.slow  # About 40 s; test_segmentation_end_to_end is fast.
def test_fcn_learns_to_segment_its_training_images(tmp_path):
  """FCN-32s on larger generated images (colours encode their labels),
  trained and tested on train: mIoU and pixel accuracy climb well above
  the start's (measured, seed 0: mIoU 0.08 -> 0.31, pixels 0.80 -> 0.89).

  The fast tier's tiny runs have a 1x1 score map, which cannot segment."""
  devkit = voc_folder.write_vocdevkit(str(tmp_path), image_size=(120, 160))
  workdir = str(tmp_path / 'seg')
  _run(tiny_transfer_config(
      devkit, 'voc_segmentation', test_split='train', num_epochs=40,
      batch_size=2, transfer_image_size=160, eval_every_epochs=10,
      learning_rate_steps_table=((10_000, 0.01),), weight_decay=0.0),
       workdir)
  tests = [e for e in _events(workdir) if e['split'] == 'test']
  assert tests[-1]['mIoU'] > tests[0]['mIoU'] + 0.15, tests
  assert tests[-1]['pixel_accuracy'] > tests[0]['pixel_accuracy'] + 0.05


@pytest.mark.slow  # The path runs in test_segmentation_end_to_end (80 px canvases, 64 px network).
def test_a_random_backbone_is_reestimated_on_central_crops(devkit,
                                                           tmp_path):
  """A random AlexNet's BatchNorm statistics, for segmentation canvases
  larger than the network's image size, come from the canvases' central
  crops (its fc layers read a pool5 map of its own size)."""
  config = tiny_transfer_config(devkit, 'voc_segmentation',
                                transfer_image_size=160, num_epochs=1)
  _run(config, str(tmp_path / 'seg'))
  with open(tmp_path / 'seg' / 'results.json') as f:
    (head,) = json.load(f)['heads']
  assert head['random_batch_stats'] == 'reestimated'
  assert head['random_batch_stats_images'] == 4


@pytest.mark.slow  # Bad input, two runs; the fast tier runs transfers end to end above.
def test_a_transfer_run_is_not_a_backbone(devkit, tmp_path):
  workdir = str(tmp_path / 'cls')
  _run(tiny_transfer_config(devkit, num_epochs=1),
                           workdir)
  config = tiny_transfer_config(devkit)
  config.pretrained = workdir
  with pytest.raises(InputError, match='holds a PASCAL VOC transfer run'):
    _run(config, str(tmp_path / 'again'))


@pytest.mark.slow  # A process; the readers' refusals: test_voc_data.py.
def test_a_bad_voc_folder_is_one_error_line_and_nothing_written(tmp_path):
  devkit = voc_folder.write_vocdevkit(str(tmp_path))
  shutil.rmtree(os.path.join(devkit, 'VOC2007', 'Annotations'))
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, 'main.py',
       '--config=configs/voc07_classification_fc6_8.py',
       f'--workdir={workdir}', '--config.pretrained=random',
       '--config.model.name=alexnet', f'--config.dataset={devkit}'],
      cwd=helpers.REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=helpers.one_device_env())
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and 'Annotations' in last, last
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()
