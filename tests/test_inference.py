"""Export, ``rotnet_jax.load``, feature extraction and the k-NN evaluation,
on one tiny RotNet trained once for the module.

The RotNet (a 1/16-width NIN-3, one epoch of the 1,500 training digits in
batches of 32) reaches about 50% test rotation accuracy (chance: 25%), so
what it learned can be told from a random network.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

import helpers
from rotnet_jax import config_schema
from rotnet_jax import inference
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax import weights as weights_lib
from rotnet_jax.data import digits
from rotnet_jax.errors import InputError
from rotnet_jax.inference import extract
from rotnet_jax.training import import_official
from rotnet_jax.training import train
from rotnet_jax.weights import export
from rotnet_jax.weights import safetensors_format
from rotnet_jax.weights import torch_format
import rotnet_jax

WIDTH = 1 / 16


def _rotnet_config(**overrides):
  return helpers.tiny_config(**{
      'model.width': WIDTH, 'num_train_examples': 0, 'batch_size': 32,
      **overrides})


@pytest.fixture(scope='module')
def rotnet(tmp_path_factory):
  """``(workdir, exported file)`` of the trained RotNet."""
  workdir = str(tmp_path_factory.mktemp('rotnet'))
  train.train_and_evaluate(_rotnet_config(), workdir,
                           mesh=parallel.make_mesh(jax.devices()[:1]))
  out = os.path.join(str(tmp_path_factory.mktemp('exported')),
                     'rotnet.safetensors')
  export.export(workdir, out)
  return workdir, out


@pytest.fixture(scope='module')
def test_digits():
  return digits.load('test')


def _flat(tree):
  return {k: np.asarray(v)
          for k, v in safetensors_format.flatten(tree).items()}


def _run(args, cwd=None):
  env = dict(os.environ, PYTHONPATH=helpers.REPO_ROOT, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, env=env, cwd=cwd, timeout=120)


# Export.

def test_export_loads_with_numpy_alone_and_equals_the_checkpoint(
    rotnet, tmp_path):
  workdir, out = rotnet
  copy = tmp_path / 'arrays.npz'
  # The README's snippet, in a process that must import neither JAX nor
  # rotnet_jax.
  script = textwrap.dedent(f'''
      import json, sys
      from safetensors import safe_open
      from safetensors.numpy import load_file
      arrays = load_file({out!r})
      with safe_open({out!r}, 'np') as f:
        meta = {{k: json.loads(v) if k != 'format' else v
                 for k, v in f.metadata().items()}}
      import numpy as np
      np.savez({str(copy)!r}, **arrays)
      print(json.dumps({{'meta': meta, 'modules': sorted(
          m for m in sys.modules
          if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'rotnet_jax'))}}))
  ''')
  result = _run(['-c', script], cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report['modules'] == []
  meta = report['meta']
  assert meta['format'] == 'rotnet-jax'
  assert meta['rotations'] == [0, 90, 180, 270]
  saved = weights_lib.read(workdir)
  assert meta['spec'] == saved.spec
  assert (meta['spec']['name'], meta['spec']['num_blocks'],
          meta['spec']['width']) == ('nin', 3, WIDTH)
  assert meta['config']['mode'] == 'pretext'
  assert meta['source']['pretrained_step'] == int(
      os.listdir(os.path.join(workdir, 'checkpoints'))[0])
  assert meta['mean_rgb'] == list(config_schema.CIFAR_MEAN_RGB)
  assert 'HWIO' in meta['layout']

  expected = _flat(saved.variables)
  with np.load(copy) as loaded:
    assert sorted(loaded.files) == sorted(expected)
    for key, value in expected.items():
      assert loaded[key].dtype == np.float32
      np.testing.assert_array_equal(loaded[key], value, err_msg=key)
  assert expected['params/blocks/0/layers/0/conv/kernel'].shape[:3] == (5, 5, 3)
  assert any(k.startswith('batch_stats/') for k in expected)


def test_read_exported_round_trip(rotnet):
  workdir, out = rotnet
  saved = weights_lib.read(workdir)
  read = safetensors_format.read(out)
  assert read.spec == saved.spec
  assert read.mean_rgb == saved.mean_rgb and read.std_rgb == saved.std_rgb
  assert read.heads is None
  assert read.origin['pretrained_format'] == 'safetensors'
  assert read.origin['exported_from']['pretrained'] == os.path.abspath(workdir)
  got, want = _flat(read.variables), _flat(saved.variables)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


def _rewrite(source, target, *, drop=(), add=None, meta=None):
  """A copy of the exported `source` with arrays and metadata changed."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  with safe_open(source, 'np') as f:
    metadata = dict(f.metadata())
    arrays = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
  arrays.update(add or {})
  metadata.update(meta or {})
  save_file(arrays, target, metadata=metadata)
  return str(target)


def test_read_exported_refuses_what_it_did_not_write(rotnet, tmp_path):
  _, out = rotnet
  # Cut short.
  truncated = tmp_path / 'truncated.safetensors'
  truncated.write_bytes(open(out, 'rb').read()[:-100])
  with pytest.raises(InputError, match='truncated.safetensors.*not a '
                     'readable safetensors file'):
    safetensors_format.read(str(truncated))
  # Not a safetensors file at all.
  text = tmp_path / 'text.safetensors'
  text.write_text('hello')
  with pytest.raises(InputError, match='not a readable safetensors'):
    safetensors_format.read(str(text))
  # Another program's safetensors file.
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  foreign = tmp_path / 'foreign.safetensors'
  save_file({'weight': np.zeros(3, np.float32)}, str(foreign))
  with pytest.raises(InputError, match="not a rotnet-jax export.*'rotnet-jax'"):
    safetensors_format.read(str(foreign))
  # Another architecture: the metadata says NIN-4, the arrays are a NIN-3's.
  spec = dict(safetensors_format.read_metadata(out)['spec'], num_blocks=4)
  nin4 = _rewrite(out, tmp_path / 'nin4.safetensors',
                  meta={'spec': json.dumps(spec)})
  with pytest.raises(InputError, match=(
      r'nin4.safetensors does not hold the arrays of the backbone .*'
      r"missing \['batch_stats/blocks/3")):
    safetensors_format.read(nin4)
  # A missing and an unexpected array.
  missing = _rewrite(out, tmp_path / 'missing.safetensors',
                     drop=('params/classifier/bias',))
  with pytest.raises(InputError, match=r"missing \['params/classifier/bias'\]"):
    safetensors_format.read(missing)
  extra = _rewrite(out, tmp_path / 'extra.safetensors',
                   add={'params/extra': np.zeros(2, np.float32)})
  with pytest.raises(InputError, match=r"unexpected \['params/extra'\]"):
    safetensors_format.read(extra)
  # An unknown backbone.
  other = _rewrite(out, tmp_path / 'resnet.safetensors',
                   meta={'spec': json.dumps(dict(spec, name='resnet'))})
  with pytest.raises(InputError, match="cannot be built here.*'nin'"):
    safetensors_format.read(other)


def test_export_output_rules(rotnet, tmp_path):
  workdir, out = rotnet
  target = tmp_path / 'out.safetensors'
  target.write_bytes(b'keep me')
  with pytest.raises(InputError, match='already exists: pass --overwrite'):
    export.export(workdir, str(target))
  assert target.read_bytes() == b'keep me'
  export.export(workdir, str(target), overwrite=True)
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
  # The same content (safetensors orders its metadata freely).
  assert (safetensors_format.read_metadata(str(target)) ==
          safetensors_format.read_metadata(out))
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  written, reference = load_file(str(target)), load_file(out)
  assert sorted(written) == sorted(reference)
  for key in reference:
    np.testing.assert_array_equal(written[key], reference[key])
  with pytest.raises(InputError, match=r'must end in \.safetensors'):
    export.export(workdir, str(tmp_path / 'out.bin'))
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(InputError, match='is a file, not a folder'):
    export.export(workdir, str(tmp_path / 'a_file' / 'out.safetensors'))


def test_an_interrupted_export_leaves_no_file(rotnet, tmp_path, monkeypatch):
  workdir, _ = rotnet
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top

  def fail_halfway(tensors, path, metadata=None):
    del tensors, metadata
    with open(path, 'wb') as f:
      f.write(b'half')
    raise KeyboardInterrupt

  monkeypatch.setattr(safetensors_numpy, 'save_file', fail_halfway)
  with pytest.raises(KeyboardInterrupt):
    export.export(workdir, str(tmp_path / 'out.safetensors'))
  assert os.listdir(tmp_path) == []


def test_export_command_line_refuses_an_existing_output(rotnet, tmp_path):
  workdir, _ = rotnet
  target = tmp_path / 'out.safetensors'
  target.write_bytes(b'keep me')
  result = _run(['-m', 'rotnet_jax.export', workdir, str(target)])
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'already exists' in errors[0]
  assert target.read_bytes() == b'keep me'


# rotnet_jax.load.

def test_import_rotnet_jax_stays_light():
  result = _run(['-c', 'import sys, rotnet_jax; '
                 "print('jax' in sys.modules, callable(rotnet_jax.load), "
                 "'jax' in sys.modules)"])
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['False', 'True', 'True']


def test_load_workdir_and_export_agree(rotnet, test_digits):
  workdir, out = rotnet
  images = test_digits[0][:40]
  from_workdir = rotnet_jax.load(workdir)
  from_file = rotnet_jax.load(out)
  assert from_workdir.rotations == from_file.rotations == (0, 90, 180, 270)
  assert from_file.block_names == ('conv1', 'conv2', 'conv3')
  np.testing.assert_array_equal(from_workdir.logits(images),
                                from_file.logits(images))
  a = from_workdir.features(images, ('conv1', 'conv3'))
  b = from_file.features(images, ('conv1', 'conv3'))
  assert a.keys() == b.keys() == {'conv1', 'conv3'}
  for block in a:
    np.testing.assert_array_equal(a[block], b[block])


def test_features_are_the_network_on_normalised_images(rotnet, test_digits):
  workdir, _ = rotnet
  images = test_digits[0][:24]
  model = rotnet_jax.load(workdir)
  saved = weights_lib.read(workdir)
  network = nnx.merge(models.backbone_graphdef(saved.spec, np.float32),
                      saved.variables['params'],
                      saved.variables['batch_stats'])
  normalised = ((images.astype(np.float32) - np.float32(saved.mean_rgb)) /
                np.float32(saved.std_rgb))
  logits, features = network(normalised, train=False)
  got = model.features(images, ('conv2', 'conv3'), batch_size=10)
  assert got['conv2'].shape == (24, 8, 8, 12)  # NHWC
  for block in got:
    np.testing.assert_allclose(got[block], np.asarray(features[block]),
                               rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model.logits(images), np.asarray(logits),
                             rtol=1e-4, atol=1e-5)
  pooled = model.features(images, 'conv2', pool=True)['conv2']
  np.testing.assert_allclose(pooled, got['conv2'].mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_eight_devices_give_the_one_device_results(rotnet, test_digits):
  workdir, _ = rotnet
  assert len(jax.local_devices()) == 8
  weights = weights_lib.read(workdir)
  images = test_digits[0][:29]
  one = inference.Model(weights, devices=jax.local_devices()[:1])
  eight = inference.Model(weights)  # Default: every local device.
  assert eight.num_devices == 8
  # 29 images in batches of 12: 12, 12 and 5, each padded to a multiple of
  # 8 on the mesh and cut back.
  a = one.features(images, ('conv2',), batch_size=12)['conv2']
  b = eight.features(images, ('conv2',), batch_size=12)['conv2']
  assert a.shape == b.shape == (29, 8, 8, 12)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(one.logits(images),
                             eight.logits(images, batch_size=12),
                             rtol=1e-5, atol=1e-5)


def test_predict_rotation_beats_chance(rotnet, test_digits):
  workdir, _ = rotnet
  model = rotnet_jax.load(workdir)
  images = test_digits[0]
  correct = 0
  for k, angle in enumerate(model.rotations):
    # rot90 k times over (H, W): counter-clockwise by k * 90 degrees, as the
    # pretext task rotates.
    rotated = np.ascontiguousarray(np.rot90(images, k, axes=(1, 2)))
    assert angle == 90 * k
    correct += np.sum(model.predict_rotation(rotated) == k)
  accuracy = correct / (4 * len(images))
  # The run's own test rotation accuracy, on the same images.
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert accuracy == pytest.approx(results['heads'][0]['final_test_accuracy'],
                                   abs=0.01)
  assert accuracy > 0.4, accuracy


# An official RotNet that tells rotations apart by construction: its first
# convolution's channel k responds to a sharp rise of brightness in the
# direction np.rot90(., k) turns "to the right" into; every later layer
# passes channels 0-3 on, and the classifier reads channel k as class k.
_RIGHTWARD_STEP = np.zeros((5, 5), np.float32)
_RIGHTWARD_STEP[2, 2], _RIGHTWARD_STEP[2, 3] = -1.0, 1.0  # x[c + 1] - x[c].
# On the three normalised channels, a step from black to white rises by
# about 12 and the image's border (zero padding) by about 6.
_STEP_THRESHOLD = 9.0


def _official_rotation_detector(out, width=1 / 16):
  """Writes, as the official code saves its RotNet (``torch.save({'epoch':
  N, 'network': state_dict})``, official names, PyTorch's OIHW layout),
  a NIN-3 whose class ``k`` is a black-to-white edge turned by
  ``np.rot90(., k)`` from a vertical one (black left, white right)."""
  torch = pytest.importorskip('torch')
  config = config_schema.defaults()
  config.model.num_blocks, config.model.width = 3, width
  spec = models.backbone_spec(config.model, image_size=32, num_classes=4)
  shapes = {tuple(str(getattr(k, 'key', k)) for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(
                models.abstract_variables(spec))[0]}
  first_conv = '_feature_blocks.0.Block1_ConvB1.layers.'
  state = {}
  # The importer's table: (official key, our path, layout); only the keys
  # and shapes are taken from it.
  # pylint: disable-next=protected-access
  for key, our_path, how in torch_format._backbone_entries(3):
    shape = shapes[tuple(map(str, our_path))]
    if how == 'conv':  # HWIO -> OIHW.
      value = np.zeros((shape[3], shape[2], shape[0], shape[1]), np.float32)
      if key.startswith(first_conv):
        for k in range(4):
          value[k, :] = np.rot90(_RIGHTWARD_STEP, k)
      else:
        for c in range(4):
          value[c, c, shape[0] // 2, shape[1] // 2] = 1.0
    elif how == 'linear':  # [out, in].
      value = np.eye(shape[1], shape[0], dtype=np.float32)
    elif key.endswith(('.weight', 'running_var')):
      value = np.ones(shape, np.float32)
    elif key == first_conv + 'BatchNorm.bias':
      value = np.full(shape, -_STEP_THRESHOLD, np.float32)
    else:
      value = np.zeros(shape, np.float32)
    state[key] = torch.from_numpy(value)
  torch.save({'epoch': 200, 'network': state}, str(out))
  return str(out)


def test_an_official_file_answers_the_angles_np_rot90_applied(tmp_path):
  """Class ``k`` of an official RotNet is ``np.rot90(image, k)``: the
  official ``rotate_img`` turns 90 degrees as ``flipud(transpose(img))``
  and 270 as ``transpose(flipud(img))``, counter-clockwise as rot90. An
  official file read with another order (90 and 270 swapped, say) names
  the wrong angle of every image turned a quarter.

  A RotNet that knows the rotation of an edge image by construction (the
  RotNet trained above tells 0 from 180 degrees and 90 from 270 apart no
  better than chance) must answer the angle np.rot90 turned each image by,
  read from the official file and after ``import_torch``.
  """
  official = _official_rotation_detector(tmp_path / 'model_net_epoch200')
  imported = str(tmp_path / 'imported')
  import_official.import_file(official, imported)
  edges = np.zeros((3, 32, 32, 3), np.uint8)
  for image, column in zip(edges, (9, 16, 22)):
    image[:, column:] = 255  # Black on the left, white from `column` on.
  for path in (official, imported):
    model = rotnet_jax.load(path)
    for k in range(4):
      turned = np.ascontiguousarray(np.rot90(edges, k, axes=(1, 2)))
      angles = np.take(model.rotations, model.predict_rotation(turned))
      assert angles.tolist() == [90 * k] * 3, (path, k, angles)


@pytest.mark.parametrize('images,match', [
    (np.zeros((2, 32, 32, 3), np.float32), 'got dtype float32'),
    (np.zeros((2, 3, 32, 32), np.uint8), r'channels first'),
    (np.zeros((2, 28, 28, 3), np.uint8), r'\[N, 32, 32, 3\].*\(2, 28, 28, 3\)'),
    (np.zeros((32, 32, 3), np.uint8), 'got shape'),
    (np.zeros((2, 32, 32, 1), np.uint8), 'got shape'),
    (np.zeros((0, 32, 32, 3), np.uint8), 'no images'),
    ([[1, 2]], 'got a list'),
])
def test_bad_images_are_refused(rotnet, images, match):
  model = _model(rotnet[1])
  with pytest.raises(InputError, match=match):
    model.features(images)


def test_bad_calls_are_refused(rotnet):
  model = _model(rotnet[1])
  images = np.zeros((2, 32, 32, 3), np.uint8)
  with pytest.raises(InputError, match=r"expected some of \['conv1', "):
    model.features(images, ('conv4',))
  with pytest.raises(InputError, match='batch_size=0'):
    model.logits(images, batch_size=0)
  with pytest.raises(InputError, match='no classifier heads'):
    model.classify(images)
  with pytest.raises(InputError, match='step=3 only applies to a workdir'):
    rotnet_jax.load(rotnet[1], step=3)


_MODELS = {}


def _model(path):
  if path not in _MODELS:
    _MODELS[path] = rotnet_jax.load(path)
  return _MODELS[path]


# Heads: an evaluation run's classifiers.

# An evaluation run: the slow tier (the default run checks an exported file
# against its workdir's evaluation,
# test_an_exported_file_evaluates_like_its_workdir).
@pytest.mark.slow
def test_classify_reproduces_the_evaluation_run(rotnet, tmp_path, test_digits):
  workdir, _ = rotnet
  evaluation = str(tmp_path / 'eval')
  train.train_and_evaluate(
      _rotnet_config(mode='evaluate', pretrained=workdir, blocks=('conv2',),
                     num_train_examples=500, batch_size=96),
      evaluation, mesh=parallel.make_mesh(jax.devices()[:1]))
  images, labels = test_digits
  model = rotnet_jax.load(evaluation)
  assert model.heads.blocks == ('conv2',)
  logits = model.classify(images)['conv2']
  assert logits.shape == (len(images), 10)
  results = json.load(open(os.path.join(evaluation, 'results.json')))
  assert np.mean(np.argmax(logits, -1) == labels) == pytest.approx(
      results['heads'][0]['final_test_accuracy'], abs=1e-6)
  out = str(tmp_path / 'eval.safetensors')
  export.export(evaluation, out)
  exported = rotnet_jax.load(out)
  assert exported.rotations == (0, 90, 180, 270)
  np.testing.assert_array_equal(exported.classify(images)['conv2'], logits)


@pytest.mark.slow  # Two evaluation runs; the same weights: test_load_workdir_and_export_agree.
def test_an_exported_file_evaluates_like_its_workdir(rotnet, tmp_path):
  workdir, out = rotnet
  results = {}
  for name, pretrained in (('workdir', workdir), ('exported', out)):
    config = _rotnet_config(mode='evaluate', pretrained=pretrained,
                            blocks=('conv2',), num_train_examples=500,
                            batch_size=96)
    # The shape keys are left for the weights to say.
    for key in ('model.num_blocks', 'model.width', 'image_size'):
      config.update_from_flattened_dict({key: None})
    train.train_and_evaluate(config, str(tmp_path / name),
                             mesh=parallel.make_mesh(jax.devices()[:1]))
    with open(tmp_path / name / 'results.json') as f:
      results[name] = json.load(f)['heads'][0]
  assert results['exported']['pretrained_format'] == 'safetensors'
  # The same backbone: the same head, to the last bit of its accuracy.
  assert (results['exported']['final_test_accuracy'] ==
          results['workdir']['final_test_accuracy'])
  # Inputs normalised otherwise than the weights were trained with.
  config = _rotnet_config(mode='evaluate', pretrained=out, blocks=('conv2',),
                          mean_rgb=(0.0, 0.0, 0.0))
  with pytest.raises(InputError, match=r'mean_rgb=\(125.3'):
    train.train_and_evaluate(config, str(tmp_path / 'other'),
                             mesh=parallel.make_mesh(jax.devices()[:1]))
  assert not os.path.exists(tmp_path / 'other')


# Feature extraction.

def test_extract_writes_the_split(rotnet, tmp_path, test_digits):
  _, out = rotnet
  target = tmp_path / 'feats.npz'
  summary = extract.extract_split(pretrained=out, dataset='digits', split='test',
                        blocks=('conv1', 'conv2'), out=str(target),
                        batch_size=64)
  images, labels = test_digits
  with np.load(target) as saved:
    assert sorted(saved.files) == ['blocks', 'class_names', 'conv1', 'conv2',
                                   'labels']
    assert saved['conv1'].shape == (297, 16, 16, 6)
    assert saved['conv2'].shape == (297, 8, 8, 12)
    np.testing.assert_array_equal(saved['labels'], labels)
    assert saved['blocks'].tolist() == ['conv1', 'conv2']
    assert saved['class_names'].tolist() == [str(c) for c in range(10)]
    # Batches of 64 against one of 50: XLA's CPU programs for the two
    # shapes may sum in another order (seen: 5e-8 apart near zero).
    np.testing.assert_allclose(
        saved['conv2'][:50],
        _model(out).features(images[:50], 'conv2')['conv2'], rtol=1e-6,
        atol=1e-6)
    conv2 = saved['conv2']
  assert summary['images'] == 297
  with pytest.raises(InputError, match='already exists'):
    extract.extract_split(pretrained=out, dataset='digits', split='test',
                blocks=('conv2',), out=str(target), pool=True)
  extract.extract_split(pretrained=out, dataset='digits', split='test',
              blocks=('conv2',), out=str(target), pool=True, overwrite=True)
  with np.load(target) as saved:
    np.testing.assert_allclose(saved['conv2'], conv2.mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
  assert os.listdir(tmp_path) == ['feats.npz']


def test_extract_command_line_bad_input(rotnet, tmp_path):
  _, out = rotnet
  target = tmp_path / 'feats.npz'
  target.write_bytes(b'keep me')
  result = _run(['-m', 'rotnet_jax.extract', f'--pretrained={out}',
                 '--dataset=digits', '--split=test', f'--out={target}'])
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'already exists' in errors[0], result.stderr
  assert target.read_bytes() == b'keep me'
  with pytest.raises(InputError, match="not 'nope'"):
    extract.extract_split(pretrained=out, dataset='digits', split='nope',
                blocks=('conv2',), out=str(tmp_path / 'a.npz'))
  with pytest.raises(InputError, match='conv7'):
    extract.extract_split(pretrained=out, dataset='digits', split='test',
                blocks=('conv7',), out=str(tmp_path / 'b.npz'))
  assert os.listdir(tmp_path) == ['feats.npz']


# k-NN evaluation.

def _knn(pretrained, workdir):
  return train.train_and_evaluate(
      _rotnet_config(mode='evaluate', head='knn', pretrained=pretrained,
                     blocks=('conv2',), knn_k=20, batch_size=96),
      workdir, mesh=parallel.make_mesh(jax.devices()[:1]))


# Two k-NN evaluations of full networks: the slow tier (the default run's
# k-NN tests are in test_knn.py).
@pytest.mark.slow
def test_knn_on_a_rotnet_beats_a_random_network(rotnet, tmp_path):
  workdir, _ = rotnet
  results = _knn(workdir, str(tmp_path / 'knn'))
  random = _knn('random', str(tmp_path / 'knn_random'))
  (head,) = results['heads']
  assert head['head_type'] == 'knn' and head['block'] == 'conv2'
  assert head['k'] == 20 and head['temperature'] == 0.07
  assert head['test_samples'] == 297 and head['train_samples'] == 1500
  assert head['pretrained'] == os.path.abspath(workdir)
  assert json.load(open(tmp_path / 'knn' / 'results.json')) == json.loads(
      json.dumps(results))
  config = json.load(open(tmp_path / 'knn' / 'config.json'))
  assert config['head'] == 'knn' and config['network']['head'] == 'knn'
  assert sorted(os.listdir(tmp_path / 'knn')) == ['config.json',
                                                  'results.json']
  rotnet_accuracy = head['final_test_accuracy']
  random_accuracy = random['heads'][0]['final_test_accuracy']
  print(f'k-NN conv2: RotNet {rotnet_accuracy:.4f}, random '
        f'{random_accuracy:.4f}')
  assert rotnet_accuracy > random_accuracy + 0.05, (rotnet_accuracy,
                                                    random_accuracy)
