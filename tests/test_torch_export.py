"""Weights out to PyTorch: ``export --format=torch`` and ``torch_format.write``.

Both ways round: official files (saved by the PyTorch networks
``tests/test_torch_parity.py`` and ``tests/test_alexnet_parity.py`` write
after the official definitions) read in and written out again give the
tensors PyTorch saved, bit for bit, in its key order, and load with
``strict=True`` into those networks; our own weights written out and read
back give the same arrays, bit for bit (negative zeros and subnormals
included), and the same spec. One element of each conversion is checked
by hand, and an AlexNet written from our weights computes in PyTorch what
ours computes. Then the rules every writer keeps: the name tells the
format (a mismatched one is refused), no file over an existing one without
``--overwrite``, none inside a locked workdir, none of non-finite weights,
none left half-written; heads are refused in one line.

Skipped when PyTorch is not installed.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
# The rest needs PyTorch, hence after the skip.
# pylint: disable=g-import-not-at-top,wrong-import-position
import helpers
import test_alexnet_parity as alexnet_parity
import test_torch_parity as nin_parity
from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.weights import export
from rotnet_jax.weights import safetensors_format
from rotnet_jax.weights import torch_format
from rotnet_jax.weights import types
from rotnet_jax.workdir import lock as workdir_lock
from test_writer_locks_and_finite_weights import _write_workdir

torch.set_num_threads(2)

# Our AlexNet against PyTorch's on the exported file, as the parity tests.
FORWARD_TOLERANCE = 1e-4
ALEXNET_WIDTH = alexnet_parity.WIDTH  # 1/8: every layer in well under 1 s.


def _backbone_spec(name, *, width=1.0, num_blocks=4, image_size=32,
                   num_classes=4):
  config = config_schema.defaults()
  config.model.name = name
  config.model.width = width
  config.model.num_blocks = 5 if name == 'alexnet' else num_blocks
  return models.backbone_spec(config.model, image_size=image_size,
                              num_classes=num_classes)


def _random_weights(spec, seed=0, **kwargs):
  """Weights of `spec` with a distinct random value everywhere (so that a
  transposed or permuted array shows), positive variances, and in AlexNet's
  first fc layer a negative zero and a subnormal (which any arithmetic on
  the values would lose)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    value = rng.normal(size=leaf.shape).astype(np.float32)
    return np.abs(value) + 0.5 if name == 'var' else value

  variables = jax.tree_util.tree_map_with_path(
      fill, models.abstract_variables(spec))
  if spec['name'] == 'alexnet':
    kernel = variables['params']['fc_block']['linear1']['kernel']
    kernel[0, 0], kernel[1, 0] = -0.0, np.float32(1e-45)
  origin = {'pretrained': 'test', 'pretrained_format': 'test',
            'pretrained_step': None}
  return types.Weights(spec, variables, origin, **kwargs)


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_bitwise_equal(ours, theirs):
  ours, theirs = _flat(ours), _flat(theirs)
  assert sorted(ours) == sorted(theirs)
  for key, value in ours.items():
    assert value.dtype == theirs[key].dtype == np.float32, key
    assert value.shape == theirs[key].shape, key
    # As bits: np.array_equal would take -0.0 for 0.0.
    np.testing.assert_array_equal(value.view(np.uint32),
                                  theirs[key].view(np.uint32), err_msg=key)


def _official_state(net):
  """The state dict an official file holds (PyTorch 0.2: no
  num_batches_tracked)."""
  return {k: v for k, v in net.state_dict().items()
          if not k.endswith('num_batches_tracked')}


def _assert_same_tensors(saved, net):
  """`saved` (a loaded file's 'network') holds `net`'s tensors, in the
  order and layout of its state_dict, bit for bit."""
  want = _official_state(net)
  assert list(saved) == list(want)  # The official module order.
  for key, tensor in want.items():
    assert saved[key].dtype == torch.float32, key
    assert saved[key].shape == tensor.shape, key
    assert saved[key].is_contiguous(), key
    assert torch.equal(saved[key].view(torch.int32),
                       tensor.contiguous().view(torch.int32)), key


# ---------------------------------------------------------------------------
# Official files: in, out again, the same tensors.


# NIN-5 in the slow tier: the same code as NIN-3, one more block.
@pytest.mark.parametrize(
    'num_blocks', [3, pytest.param(5, marks=pytest.mark.slow)])
def test_official_nin_file_exports_to_the_tensors_it_holds(tmp_path,
                                                           num_blocks):
  net = nin_parity.randomize(nin_parity.NetworkInNetwork(4, num_blocks),
                             seed=num_blocks).eval()
  official = nin_parity.save_official(net, tmp_path / 'model_net_epoch200')
  out = str(tmp_path / 'nin.pth')
  assert export.export(official, out) == out  # Told by the name.
  saved = torch.load(out, weights_only=True)
  assert sorted(saved) == ['epoch', 'network']
  assert saved['epoch'] == 200  # The official file's.
  _assert_same_tensors(saved['network'], net)
  # Into the official architecture, every key matched.
  fresh = nin_parity.NetworkInNetwork(4, num_blocks).eval()
  assert not fresh.load_state_dict(saved['network'], strict=True).missing_keys
  x = torch.from_numpy(np.random.default_rng(0).normal(
      size=(2, 3, 32, 32)).astype(np.float32))
  with torch.no_grad():
    assert torch.equal(fresh(x)[-1], net(x)[-1])
  # And read back: what the official file reads as.
  _assert_bitwise_equal(weights_lib.read(out).variables,
                        torch_format.read(official).variables)
  assert weights_lib.read(out).spec == torch_format.read(official).spec


def test_official_alexnet_file_exports_to_the_tensors_it_holds(tmp_path):
  size = alexnet_parity.IMAGE_SIZE
  net = alexnet_parity.randomize(
      alexnet_parity.AlexNet(4, ALEXNET_WIDTH, size), seed=0).eval()
  official = alexnet_parity.save_official(net, tmp_path / 'model_net_epoch50')
  imported = torch_format.read(official, image_size=size)
  out = torch_format.write(imported, str(tmp_path / 'alexnet.pt'), epoch=50)
  saved = torch.load(out, weights_only=True)
  assert saved['epoch'] == 50
  # The first fc layer's channel-major columns come back as they were.
  _assert_same_tensors(saved['network'], net)
  fresh = alexnet_parity.AlexNet(4, ALEXNET_WIDTH, size).eval()
  fresh.load_state_dict(saved['network'], strict=True)
  _assert_bitwise_equal(
      torch_format.read(out, image_size=size).variables, imported.variables)
  # Through the command's library call: the same file, the epoch kept.
  again = str(tmp_path / 'again.pth')
  export.export(official, again)
  assert torch.load(again, weights_only=True)['epoch'] == 50
  _assert_same_tensors(torch.load(again, weights_only=True)['network'], net)


# ---------------------------------------------------------------------------
# Our weights: out, in again, the same arrays.


@pytest.mark.parametrize('name,width,image_size', [
    ('nin', 0.5, 32), ('alexnet', ALEXNET_WIDTH, 224)])
def test_our_weights_read_back_bit_for_bit(tmp_path, name, width,
                                           image_size):
  spec = _backbone_spec(name, width=width, image_size=image_size)
  mean_std = ({} if name == 'nin' else
              {'mean_rgb': torch_format.IMAGENET_MEAN_RGB,
               'std_rgb': torch_format.IMAGENET_STD_RGB})
  ours = _random_weights(spec, **mean_std)
  out = torch_format.write(ours, str(tmp_path / f'{name}.pth'), epoch=3)
  assert torch_format.unrecorded(ours) == []  # The file says it all.
  for back in (weights_lib.read(out), torch_format.read(out)):
    assert back.spec == spec
    assert back.heads is None
    assert (back.mean_rgb, back.std_rgb) == (ours.mean_rgb, ours.std_rgb)
    _assert_bitwise_equal(back.variables, ours.variables)
  assert torch_format.read_kind(out) == (torch_format.BACKBONE, 3)


def test_layouts_element_by_element(tmp_path):
  """Hand-worked indices, independent of the writer's reshapes."""
  spec = _backbone_spec('alexnet', width=ALEXNET_WIDTH, image_size=224)
  ours = _random_weights(spec)
  state = torch_format.state_dict(ours)
  params = ours.variables['params']
  # conv2 kernel HWIO [kh, kw, in, out] -> OIHW [out, in, kh, kw].
  kernel = params['conv2']['conv']['kernel']
  assert kernel.shape[0] == 5 and kernel.shape[2] != kernel.shape[3]
  assert (state['_feature_blocks.2.0.weight'][7, 3, 1, 4] ==
          kernel[1, 4, 3, 7])
  # fc1: pool5 is 6x6x32; our input (h*6 + w)*32 + c, theirs c*36 + h*6 + w.
  fc1 = params['fc_block']['linear1']['kernel']
  theirs = state['_feature_blocks.8.1.weight']
  assert fc1.shape == (6 * 6 * 32, 512) and theirs.shape == (512, 1152)
  for h, w, c, o in ((0, 0, 1, 0), (2, 5, 0, 3), (5, 1, 31, 511)):
    assert theirs[o, c * 36 + h * 6 + w] == fc1[(h * 6 + w) * 32 + c, o]
  # [in, out] -> [out, in]; BatchNorm copied, under PyTorch's names.
  assert (state['_feature_blocks.9.0.weight'] ==
          params['classifier']['kernel'].T).all()
  np.testing.assert_array_equal(
      state['_feature_blocks.8.5.running_var'],
      ours.variables['batch_stats']['fc_block']['norm2']['var'])
  assert list(state)[:6] == [
      '_feature_blocks.0.0.weight', '_feature_blocks.0.0.bias',
      '_feature_blocks.0.1.weight', '_feature_blocks.0.1.bias',
      '_feature_blocks.0.1.running_mean', '_feature_blocks.0.1.running_var']
  nin = torch_format.state_dict(_random_weights(_backbone_spec('nin')))
  assert list(nin)[-7:] == [
      '_feature_blocks.3.Block4_ConvB3.layers.Conv.weight',
      '_feature_blocks.3.Block4_ConvB3.layers.BatchNorm.weight',
      '_feature_blocks.3.Block4_ConvB3.layers.BatchNorm.bias',
      '_feature_blocks.3.Block4_ConvB3.layers.BatchNorm.running_mean',
      '_feature_blocks.3.Block4_ConvB3.layers.BatchNorm.running_var',
      '_feature_blocks.4.Classifier.weight',
      '_feature_blocks.4.Classifier.bias']


@pytest.mark.slow  # A PyTorch forward pass; the layout it relies on, bit for bit: test_layouts_element_by_element and test_official_alexnet_file_exports_to_the_tensors_it_holds.
def test_exported_alexnet_computes_in_pytorch_what_ours_computes(tmp_path):
  size = alexnet_parity.IMAGE_SIZE
  spec = _backbone_spec('alexnet', width=ALEXNET_WIDTH, image_size=size)
  variables = jax.tree.map(np.asarray,
                           jax.jit(lambda: models.init_variables(spec, 0))())
  rng = np.random.default_rng(1)
  # Non-trivial statistics, so that a wrong pairing of them shows.
  variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda path, x: rng.uniform(
          *((0.5, 2.0) if path[-1].key == 'var' else (-0.3, 0.3)),
          x.shape).astype(np.float32), variables['batch_stats'])
  ours = types.Weights(spec, variables, {'pretrained': 'test'})
  out = torch_format.write(ours, str(tmp_path / 'alexnet.pth'))
  net = alexnet_parity.AlexNet(4, ALEXNET_WIDTH, size).eval()
  net.load_state_dict(torch.load(out, weights_only=True)['network'],
                      strict=True)
  x = alexnet_parity.images(3, size)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  model = nnx.merge(models.backbone_graphdef(spec, jnp.float32),
                    variables['params'], variables['batch_stats'])
  logits, features = model(jnp.asarray(x), train=False)
  errors = {  # Not trivially 0: the measure divides by PyTorch's largest.
      'conv5': alexnet_parity.relative(features['conv5'],
                                       alexnet_parity.nhwc(theirs['conv5'])),
      'fc_block': alexnet_parity.relative(features['fc_block'][:, 0, 0],
                                          theirs['fc_block'].numpy()),
      'logits': alexnet_parity.relative(logits,
                                        theirs['classifier'].numpy())}
  assert max(errors.values()) < FORWARD_TOLERANCE, errors


# ---------------------------------------------------------------------------
# The export's choices and refusals.


@pytest.mark.parametrize('out,file_format,expected', [
    ('a.safetensors', None, 'safetensors'),
    ('a.pth', None, 'torch'),
    ('a.pt', None, 'torch'),
    ('model_net_epoch200', 'torch', 'torch'),
    ('a.pth', 'torch', 'torch'),
    ('a.safetensors', 'safetensors', 'safetensors'),
    ('a.safetensors', 'torch', r'--format=torch, but .* ends in '
     r'\.safetensors'),
    ('a.pt', 'safetensors', r'--format=safetensors, but .* ends in '
     r'\.pth/\.pt'),
    ('a.bin', None, r'must end in \.safetensors .* or \.pth/\.pt'),
    ('a.pth', 'onnx', 'valid formats are safetensors, torch'),
])
def test_the_name_tells_the_format(out, file_format, expected):
  if expected in export.FORMATS:
    assert export.output_format(out, file_format) == expected
  else:
    with pytest.raises(InputError, match=expected):
      export.output_format(out, file_format)


def test_a_workdir_exports_with_its_epoch_under_any_name(tmp_path):
  config = helpers.tiny_config()
  spec = models.backbone_spec(config.model, image_size=config.image_size,
                              num_classes=len(config.rotations))
  ours = _random_weights(spec)
  workdir = _write_workdir(tmp_path / 'run', config, spec,
                           safetensors_format.flatten(ours.variables))
  # The official files' kind of name: no suffix, so --format says it.
  out = str(tmp_path / 'model_net_epoch1')
  assert export.export(workdir, out, file_format='torch') == out
  assert torch.load(out, weights_only=True)['epoch'] == 1  # The checkpoint's.
  back = weights_lib.read(out)
  assert back.spec == spec
  _assert_bitwise_equal(back.variables, ours.variables)
  # A workdir is not rewritten: the default still needs a known ending.
  with pytest.raises(InputError, match=r'must end in \.safetensors'):
    export.export(workdir, str(tmp_path / 'model_net_epoch2'))


def test_existing_files_locks_and_interruptions(tmp_path, monkeypatch):
  net = nin_parity.randomize(nin_parity.NetworkInNetwork(4, 3), seed=1)
  official = nin_parity.save_official(net, tmp_path / 'model_net_epoch200')
  target = tmp_path / 'out.pth'
  target.write_bytes(b'keep me')
  with pytest.raises(InputError, match='already exists: pass --overwrite'):
    export.export(official, str(target))
  assert target.read_bytes() == b'keep me'
  export.export(official, str(target), overwrite=True)
  _assert_same_tensors(torch.load(target, weights_only=True)['network'], net)
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask

  workdir = tmp_path / 'run'
  workdir.mkdir()
  with workdir_lock.lock(str(workdir)):
    with pytest.raises(InputError, match='is inside the workdir'):
      export.export(official, str(workdir / 'nin.pth'))
  assert sorted(os.listdir(workdir)) == []

  def fail_halfway(obj, path, **unused_kwargs):
    del obj
    with open(path, 'wb') as f:
      f.write(b'half')
    raise KeyboardInterrupt

  before = sorted(os.listdir(tmp_path))
  monkeypatch.setattr(torch, 'save', fail_halfway)
  with pytest.raises(KeyboardInterrupt):
    export.export(official, str(tmp_path / 'cut.pth'))
  assert sorted(os.listdir(tmp_path)) == before  # Not even a .tmp.


@pytest.mark.parametrize('value,found', [(np.nan, '1 NaN'),
                                         (-np.inf, '1 -inf')])
def test_non_finite_weights_are_not_written(tmp_path, value, found):
  ours = _random_weights(_backbone_spec('nin', num_blocks=3))
  ours.variables['batch_stats']['blocks'][1]['layers'][2]['norm']['var'][
      4] = value
  out = tmp_path / 'nan.pth'
  with pytest.raises(InputError) as error:
    torch_format.write(ours, str(out))
  message = str(error.value)
  assert 'non-finite weights' in message and found in message
  # Named as the file would name it.
  assert ('_feature_blocks.1.Block2_ConvB3.layers.BatchNorm.running_var'
          in message)
  assert not out.exists() and os.listdir(tmp_path) == []


def test_heads_and_other_backbones_are_refused_in_one_line(tmp_path):
  spec = _backbone_spec('nin', num_blocks=3)
  backbone = _random_weights(spec)
  heads = types.Heads('linear', ('conv2',), 10, {
      'params': {'conv2': {'output': {'kernel': np.zeros((4, 10),
                                                         np.float32)}}},
      'batch_stats': {'conv2': {}}})
  # An exported file with heads: everything goes to .safetensors.
  with_heads = safetensors_format.write(
      types.Weights(spec, backbone.variables, backbone.origin, heads=heads),
      str(tmp_path / 'eval.safetensors'))
  with pytest.raises(InputError) as error:
    export.export(with_heads, str(tmp_path / 'eval.pth'))
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'{with_heads} holds linear heads on conv2: only '
                            'backbones export to PyTorch; export everything')
  assert message.endswith('to a .safetensors file')
  # A frozen evaluation's heads: its backbone exports alone.
  frozen = types.Weights(spec, backbone.variables,
                         {'pretrained': '/runs/pretext',
                          'heads_from': '/runs/eval'}, heads=heads)
  with pytest.raises(InputError, match=r'^/runs/eval holds linear heads .* '
                     r'export its backbone \(/runs/pretext\) with '
                     '--format=torch, or'):
    torch_format.write(frozen, str(tmp_path / 'frozen.pth'))
  other = types.Weights(dict(spec, name='resnet'), backbone.variables,
                        backbone.origin)
  with pytest.raises(InputError, match="'resnet' backbone: only the NIN and "
                     'AlexNet have an official PyTorch layout'):
    torch_format.write(other, str(tmp_path / 'other.pth'))
  short = types.Weights(spec, {'params': backbone.variables['params'],
                               'batch_stats': {}}, backbone.origin)
  with pytest.raises(InputError, match=r'not the arrays .* \(missing '
                     r'batch_stats/blocks/0/layers/0/norm/mean'):
    torch_format.write(short, str(tmp_path / 'short.pth'))
  assert sorted(os.listdir(tmp_path)) == ['eval.safetensors']


def test_what_the_file_cannot_say_is_named():
  nin = _random_weights(_backbone_spec('nin', image_size=64),
                        mean_rgb=(100.0, 110.0, 120.0), std_rgb=(50., 50., 50.))
  notes = torch_format.unrecorded(nin)
  assert len(notes) == 2
  assert notes[0].startswith('its images are 64 pixels, which the file does '
                             'not record: it reads back as a 32-pixel nin')
  assert 'mean_rgb=(100.0, 110.0, 120.0)' in notes[1]
  assert "CIFAR-10's" in notes[1]
  # pool5 is 2x2 from 95 to 126 pixels: 112 reads back as 95.
  alexnet = _random_weights(
      _backbone_spec('alexnet', width=ALEXNET_WIDTH, image_size=112),
      mean_rgb=torch_format.IMAGENET_MEAN_RGB,
      std_rgb=torch_format.IMAGENET_STD_RGB)
  assert torch_format.unrecorded(alexnet) == [
      'its images are 112 pixels, which the file does not record: it reads '
      'back as a 95-pixel alexnet (import it with python -m '
      'rotnet_jax.import_torch --image_size=112)']


@pytest.mark.slow  # Two processes; the library path of the flag: test_a_workdir_exports_with_its_epoch_under_any_name.
def test_command_line_format_flag(tmp_path):
  net = nin_parity.randomize(nin_parity.NetworkInNetwork(4, 3), seed=2)
  official = nin_parity.save_official(net, tmp_path / 'model_net_epoch200')
  env = helpers.one_device_env(PYTHONPATH=helpers.REPO_ROOT,
                               JAX_PLATFORMS='cpu')

  def run(*args):
    return subprocess.run(
        [sys.executable, '-m', 'rotnet_jax.export', official, *args],
        capture_output=True, text=True, env=env, timeout=300, check=False)

  out = tmp_path / 'nin.safetensors'
  result = run(str(out), '--format=torch')
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'ends in .safetensors' in errors[0], errors
  assert 'Traceback' not in result.stderr and not out.exists()
  out = tmp_path / 'out' / 'model_net_epoch200'
  out.parent.mkdir()
  result = run(str(out), '--format=torch')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == str(out)
  _assert_same_tensors(torch.load(out, weights_only=True)['network'], net)
