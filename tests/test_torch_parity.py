"""Parity with the official PyTorch RotNet, and importing its files.

A PyTorch NIN and the two CIFAR-10 classifiers are written here after the
official definitions (``architectures/NetworkInNetwork.py`` and
``NonLinearClassifier.py`` of FeatureLearningRotNet), with the official
module names, so their ``state_dict()`` keys are those of the official
files. Random weights are saved the official way and imported with
``rotnet_jax.weights.torch_format``; the imported network must compute what
PyTorch computes (every block's features, logits, both heads) and train
like it (three SGD steps of the project's own train step). Then the files
that must be refused, and the ``rotnet_jax.import_torch`` command.

Skipped when PyTorch is not installed.
"""

import functools
import math
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
# The rest needs PyTorch, hence after the skip.
# pylint: disable=g-import-not-at-top,wrong-import-position
from torch import nn

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax import weights as weights_lib
from rotnet_jax.data import digits
from rotnet_jax.data import transforms
from rotnet_jax.errors import InputError
from rotnet_jax.training import import_official as import_torch
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import steps as steps_lib
from rotnet_jax.weights import restore
from rotnet_jax.weights import torch_format
from rotnet_jax.workdir import checkpoint as checkpoint_lib
import helpers

torch.set_num_threads(2)

# Forward parity, as max|ours - torch| / max|torch| per block and logits.
FORWARD_TOLERANCE = 1e-4
# Parameters after three SGD steps, the same measure per array.
TRAIN_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------
# The official networks, in PyTorch (module names as the official code).


class BasicBlock(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU, as ``BasicBlock`` officially."""

  def __init__(self, in_planes, out_planes, kernel_size):
    super().__init__()
    self.layers = nn.Sequential()
    self.layers.add_module('Conv', nn.Conv2d(
        in_planes, out_planes, kernel_size, stride=1,
        padding=(kernel_size - 1) // 2, bias=False))
    self.layers.add_module('BatchNorm', nn.BatchNorm2d(out_planes))
    self.layers.add_module('ReLU', nn.ReLU(inplace=True))

  def forward(self, x):
    return self.layers(x)


class GlobalAveragePooling(nn.Module):

  def forward(self, x):
    return x.mean(dim=(2, 3))


class NetworkInNetwork(nn.Module):
  """The official NIN with ``use_avg_on_conv3=False``; returns every block."""

  def __init__(self, num_classes, num_stages):
    super().__init__()
    blocks = [nn.Sequential() for _ in range(num_stages)]
    blocks[0].add_module('Block1_ConvB1', BasicBlock(3, 192, 5))
    blocks[0].add_module('Block1_ConvB2', BasicBlock(192, 160, 1))
    blocks[0].add_module('Block1_ConvB3', BasicBlock(160, 96, 1))
    blocks[0].add_module('Block1_MaxPool', nn.MaxPool2d(3, 2, 1))
    blocks[1].add_module('Block2_ConvB1', BasicBlock(96, 192, 5))
    blocks[1].add_module('Block2_ConvB2', BasicBlock(192, 192, 1))
    blocks[1].add_module('Block2_ConvB3', BasicBlock(192, 192, 1))
    blocks[1].add_module('Block2_AvgPool', nn.AvgPool2d(3, 2, 1))
    for s in range(2, num_stages):
      for j, k in enumerate((3, 1, 1)):
        blocks[s].add_module(f'Block{s + 1}_ConvB{j + 1}',
                             BasicBlock(192, 192, k))
    blocks.append(nn.Sequential())
    blocks[-1].add_module('GlobalAveragePooling', GlobalAveragePooling())
    blocks[-1].add_module('Classifier', nn.Linear(192, num_classes))
    self._feature_blocks = nn.ModuleList(blocks)

  def forward(self, x):
    outputs = []
    for block in self._feature_blocks:
      x = block(x)
      outputs.append(x)
    return outputs  # conv1..convN, logits.


class Flatten(nn.Module):

  def forward(self, x):
    return x.reshape(x.shape[0], -1)  # Channel-major, as x is NCHW.


class Classifier(nn.Module):
  """The official ``NonLinearClassifier`` (``MultLayer``, ``NIN_ConvBlock3``).

  The official ``MultLayer`` applies ``BatchNorm2d`` to 2-D inputs, which
  PyTorch 0.2 allowed; ``BatchNorm1d`` computes the same and has the same
  state-dict keys.
  """

  def __init__(self, cls_type, in_channels, num_classes):
    super().__init__()
    self.classifier = nn.Sequential()
    if cls_type == 'MultLayer':
      hidden = min(num_classes * 20, 2048)
      self.classifier.add_module('Flatten', Flatten())
      self.classifier.add_module('Liniear_1', nn.Linear(in_channels, hidden,
                                                        bias=False))
      self.classifier.add_module('BatchNorm_1', nn.BatchNorm1d(hidden))
      self.classifier.add_module('ReLU_1', nn.ReLU(inplace=True))
      self.classifier.add_module('Liniear_2', nn.Linear(hidden, hidden,
                                                        bias=False))
      self.classifier.add_module('BatchNorm2d', nn.BatchNorm1d(hidden))
      self.classifier.add_module('ReLU_2', nn.ReLU(inplace=True))
      self.classifier.add_module('Liniear_F', nn.Linear(hidden, num_classes))
    else:
      self.classifier.add_module('Block3_ConvB1',
                                 BasicBlock(in_channels, 192, 3))
      self.classifier.add_module('Block3_ConvB2', BasicBlock(192, 192, 1))
      self.classifier.add_module('Block3_ConvB3', BasicBlock(192, 192, 1))
      self.classifier.add_module('GlobalAvgPool', GlobalAveragePooling())
      self.classifier.add_module('Liniear_F', nn.Linear(192, num_classes))

  def forward(self, x):
    return self.classifier(x)


def randomize(net, seed):
  """Random weights the way the official runs had them, and non-trivial
  BatchNorm statistics (so that using the wrong ones shows)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_out = module.weight.shape[0] * math.prod(module.weight.shape[2:])
        module.weight.normal_(0, math.sqrt(2.0 / fan_out),
                              generator=generator)
        if module.bias is not None:
          module.bias.uniform_(-0.1, 0.1, generator=generator)
      elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        # PyTorch 0.2's BatchNorm initialised its weight U(0, 1).
        module.weight.uniform_(0, 1, generator=generator)
        module.bias.uniform_(-0.2, 0.2, generator=generator)
        module.running_mean.uniform_(-0.3, 0.3, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
  return net


def save_official(net, path, epoch=200, **kwargs):
  torch.save({'epoch': epoch, 'network': net.state_dict()}, path, **kwargs)
  return str(path)


# ---------------------------------------------------------------------------
# Helpers.


@functools.lru_cache(maxsize=None)
def digit_images(count):
  """`count` bundled digits, uint8 [count, 32, 32, 3] (RGB, upscaled)."""
  return np.asarray(digits.load('test')[0][:count])


def normalise(images):
  mean = np.asarray(config_schema.CIFAR_MEAN_RGB, np.float32)
  std = np.asarray(config_schema.CIFAR_STD_RGB, np.float32)
  return (images.astype(np.float32) - mean) / std


def to_torch(nhwc):
  return torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))


def relative(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def nhwc(tensor):
  array = tensor.detach().numpy()
  return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def our_forward(imported, images):
  model = nnx.merge(models.backbone_graphdef(imported.spec, jnp.float32),
                    imported.variables['params'],
                    imported.variables['batch_stats'])
  return model(jnp.asarray(images), train=False)


PARITY = {}  # Figures for the report: printed by -s.


# ---------------------------------------------------------------------------
# Forward parity.


@pytest.mark.parametrize('num_blocks', [3, 4, 5])
def test_imported_nin_computes_what_pytorch_computes(tmp_path, num_blocks):
  net = randomize(NetworkInNetwork(4, num_blocks), seed=num_blocks).eval()
  path = save_official(net, tmp_path / 'model_net_epoch200')
  imported = torch_format.read(path)
  config = config_schema.defaults()
  config.model.num_blocks = num_blocks
  assert imported.spec == models.backbone_spec(config.model, image_size=32,
                                               num_classes=4)
  assert (imported.spec['num_blocks'], imported.spec['width']) == (
      num_blocks, 1.0)
  # Exactly the tree (and dtypes) of a freshly initialised network.
  want = models.abstract_variables(imported.spec)
  assert (jax.tree.structure(imported.variables) == jax.tree.structure(want))
  for ours, theirs in zip(jax.tree.leaves(imported.variables),
                          jax.tree.leaves(want)):
    assert ours.shape == theirs.shape and ours.dtype == np.float32
  assert imported.origin['pretrained'] == os.path.abspath(path)

  images = normalise(digit_images(6))
  with torch.no_grad():
    theirs = net(to_torch(images))
  logits, features = our_forward(imported, images)
  errors = {f'conv{i + 1}': relative(features[f'conv{i + 1}'], nhwc(t))
            for i, t in enumerate(theirs[:-1])}
  errors['logits'] = relative(logits, theirs[-1].numpy())
  PARITY[f'NIN-{num_blocks}'] = errors
  print(f'NIN-{num_blocks} max relative differences:', errors)
  assert max(errors.values()) < FORWARD_TOLERANCE, errors


@pytest.mark.parametrize('cls_type,head_type', [('MultLayer', 'multlayer'),
                                                ('NIN_ConvBlock3',
                                                 'conv_block')])
def test_imported_heads_compute_what_pytorch_computes(tmp_path, cls_type,
                                                      head_type):
  net = randomize(NetworkInNetwork(4, 4), seed=1).eval()
  backbone_path = save_official(net, tmp_path / 'model_net_epoch200')
  in_size = 192 * 8 * 8 if cls_type == 'MultLayer' else 192
  classifier = randomize(Classifier(cls_type, in_size, 10), seed=2).eval()
  head_path = save_official(classifier, tmp_path / 'classifier_net_epoch100',
                            epoch=100)
  backbone = torch_format.read(backbone_path)
  heads = torch_format.read_heads(head_path, backbone.spec)
  assert (heads.head_type, heads.blocks, heads.num_classes) == (
      head_type, ('conv2',), 10)

  images = normalise(digit_images(6))
  with torch.no_grad():
    conv2 = net(to_torch(images))[1]
    theirs = classifier(conv2).numpy()
  head = models.heads.make_head(
      head_type, (8, 8, 192), 10,
      models.head_options(backbone.spec, linear_pool_size=6),
      rngs=nnx.Rngs(0))
  ours = nnx.merge(nnx.graphdef(head), heads.variables['params']['conv2'],
                   heads.variables['batch_stats']['conv2'])(
                       jnp.asarray(nhwc(conv2)), train=False)
  error = relative(ours, theirs)
  PARITY[head_type] = error
  print(f'{head_type} head on conv2: max relative difference {error:.2e}')
  assert error < FORWARD_TOLERANCE

  # conv1 features (16x16x96) fit only conv1; a wrong --block is refused.
  if cls_type == 'NIN_ConvBlock3':
    on_conv1 = randomize(Classifier(cls_type, 96, 10), seed=3)
    path = save_official(on_conv1, tmp_path / 'classifier_conv1')
    assert torch_format.read_heads(
        path, backbone.spec).blocks == ('conv1',)
    with pytest.raises(InputError, match='does not fit the features of conv3'):
      torch_format.read_heads(path, backbone.spec, block='conv3')
    assert torch_format.read_heads(
        head_path, backbone.spec, block='conv4').blocks == ('conv4',)


# ---------------------------------------------------------------------------
# Training parity: three SGD steps of the project's own train step.


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow  # Three steps in both frameworks; the optimiser against PyTorch: test_optim.py::test_sgd_matches_pytorch_nesterov_with_coupled_weight_decay, the forward pass: test_imported_nin_computes_what_pytorch_computes.
def test_three_training_steps_match_pytorch_sgd(tmp_path):
  """The project's train step against PyTorch's SGD, in float64.

  In float32 the comparison would say nothing: PyTorch's own float32 and
  float64 runs of these three steps differ by up to ~8% in the first
  block's weights (a 16-sample batch through 12 BatchNorm layers cancels
  most of each gradient, and the first steps move the small initial
  weights by several times their size, so rounding grows from step to
  step). Both sides run in float64 here, except the logits and the loss,
  which our NIN computes in float32 (PyTorch's are cast the same way); the
  float32 forward pass is checked above.
  """
  config = helpers.tiny_config(**{
      'model.num_blocks': 4, 'model.width': 1.0,
      'learning_rate_table': ((1, 0.1),)})
  net = randomize(NetworkInNetwork(4, 4), seed=7)
  imported = torch_format.read(save_official(net, tmp_path / 'initial'))
  # Four images, every rotation: 16 samples per step, as the pretext task.
  uint8 = digit_images(12)
  batches = [uint8[4 * i:4 * i + 4] for i in range(3)]

  with jax.enable_x64(True):
    objective = objectives.RotationPretext(config)
    assert objective.spec == imported.spec
    objective.graphdef = models.backbone_graphdef(objective.spec, jnp.float64)
    tx = optim.from_config(config, steps_per_epoch=10)
    step_fn = jax.jit(functools.partial(
        steps_lib.train_step, constants=None, objective=objective, tx=tx,
        normalization=(tuple(config.mean_rgb), tuple(config.std_rgb),
                       jnp.float64)))
    as64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                                     tree)
    params = as64(imported.variables['params'])
    state = steps_lib.TrainState(params,
                                 as64(imported.variables['batch_stats']),
                                 tx.init(params))
    for i, images in enumerate(batches):
      batch = {'image': jnp.asarray(images),
               'label': jnp.zeros(len(images), jnp.int32),
               'mask': jnp.ones(len(images), jnp.float32)}
      state, _ = step_fn(state, batch, i)
    ours = _flat({'params': state.params, 'batch_stats': state.batch_stats})
  assert ours['params/classifier/kernel'].dtype == np.float64

  net = net.double().train()
  sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9,
                        nesterov=True, weight_decay=5e-4)
  for images in batches:
    # The project's rotation convention: sample 4 i + k is image i turned
    # k * 90 degrees counter-clockwise; torch.rot90 over (H, W) of NCHW
    # turns the same way as jnp.rot90 over (H, W) of NHWC (checked below).
    # The step's own normalisation (float32), so both see the same inputs.
    x = to_torch(np.asarray(transforms.normalize(
        images, config.mean_rgb, config.std_rgb, jnp.float32))).double()
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)],
                          dim=1).reshape(-1, 3, 32, 32)
    labels = torch.arange(4).repeat(len(images))
    sgd.zero_grad()
    # Our NIN returns float32 logits (and the loss is float32): the same.
    logits = net(rotated)[-1].float()
    nn.functional.cross_entropy(logits, labels).backward()
    sgd.step()
  samples = rotated.shape[0]
  check = normalise(batches[0])
  np.testing.assert_array_equal(
      np.asarray(jnp.rot90(jnp.asarray(check), 1, axes=(1, 2))),
      nhwc(torch.rot90(to_torch(check), 1, dims=(2, 3))))

  theirs = {key: value.numpy() for key, value in _torch_state_as_ours(
      net.state_dict(), imported.spec).items()}
  initial = _flat(imported.variables)
  param_errors = {k: relative(ours[k], theirs[k])
                  for k in ours if k.startswith('params')}
  worst = max(param_errors, key=param_errors.get)
  moved = min(relative(theirs[k], initial[k]) for k in param_errors
              if 'kernel' in k)
  PARITY['train_params'] = (worst, param_errors[worst], moved)
  print(f'after 3 steps (float64): worst parameter {worst} differs by '
        f'{param_errors[worst]:.2e} (relative); the smallest kernel change '
        f'was {moved:.2e}')
  assert moved > 100 * TRAIN_TOLERANCE  # The steps did change the weights.
  assert param_errors[worst] < TRAIN_TOLERANCE, worst

  # BatchNorm statistics. PyTorch's running variance averages the unbiased
  # batch variance, Flax's the biased one (n / (n - 1) smaller, n = samples
  # x height x width per channel); the running means agree directly.
  decay = 0.9 ** len(batches)
  stat_errors = {}
  for key in ours:
    if not key.startswith('batch_stats'):
      continue
    ours_part = ours[key] - decay * initial[key]
    theirs_part = theirs[key] - decay * initial[key]
    if key.endswith('var'):
      size = _feature_side(key) ** 2 * samples
      ours_part = ours_part * size / (size - 1)
    stat_errors[key] = relative(ours_part, theirs_part)
  worst = max(stat_errors, key=stat_errors.get)
  PARITY['train_batch_stats'] = (worst, stat_errors[worst])
  print(f'after 3 steps (float64): worst BatchNorm statistic {worst} '
        f'differs by {stat_errors[worst]:.2e} (relative, variance bias '
        'corrected)')
  assert stat_errors[worst] < TRAIN_TOLERANCE, worst


def _torch_state_as_ours(state_dict, spec):
  """A float64 state dict in our flat paths (the importer's own mapping is
  float32: only the layout is reused here)."""
  flat = {}
  # pylint: disable-next=protected-access
  entries = torch_format._backbone_entries(spec['num_blocks'])
  shapes = _flat(models.abstract_variables(spec))
  for key, path, how in entries:
    name = '/'.join(map(str, path))
    convert = torch_format._convert  # pylint: disable=protected-access
    flat[name] = torch.from_numpy(np.ascontiguousarray(
        convert(state_dict[key].numpy(), how, shapes[name].shape)))
  return flat


def _feature_side(key):
  """Height (= width) of the feature map a BatchNorm of `key` normalises."""
  return 32 if '/blocks/0/' in key else 16 if '/blocks/1/' in key else 8


# ---------------------------------------------------------------------------
# Files to refuse.


@pytest.fixture(scope='module')
def nin3_file(tmp_path_factory):
  folder = tmp_path_factory.mktemp('official')
  net = randomize(NetworkInNetwork(4, 3), seed=3)
  return save_official(net, folder / 'model_net_epoch200'), net


def test_legacy_and_bare_formats_load(tmp_path, nin3_file):
  path, net = nin3_file
  want = torch_format.read(path)
  legacy = save_official(net, tmp_path / 'legacy',
                         _use_new_zipfile_serialization=False)
  assert not zipfile.is_zipfile(legacy)
  bare = tmp_path / 'bare'
  # Without num_batches_tracked, as PyTorch 0.2 wrote them, and with
  # nn.DataParallel's "module." prefix.
  torch.save({f'module.{k}': v for k, v in net.state_dict().items()
              if not k.endswith('num_batches_tracked')}, bare,
             _use_new_zipfile_serialization=False)
  for other in (legacy, str(bare)):
    got = torch_format.read(other)
    assert got.spec == want.spec
    for a, b in zip(jax.tree.leaves(got.variables),
                    jax.tree.leaves(want.variables)):
      np.testing.assert_array_equal(a, b)
  assert torch_format.read_kind(legacy) == (torch_format.BACKBONE, 200)
  # weights.read sends an official file here.
  assert weights_lib.read(path).spec == want.spec


class _RunsCode:
  """A class whose unpickling would call os.system."""

  def __reduce__(self):
    return (os.system, ('echo pwned > /dev/null',))


def _refused(path, *patterns):
  with pytest.raises(InputError) as error:
    torch_format.read(str(path))
  message = str(error.value)
  for pattern in patterns:
    assert pattern in message, message
  return message


def test_bad_files_are_refused_naming_the_file_and_keys(tmp_path, nin3_file):
  path, net = nin3_file
  state = net.state_dict()

  garbage = tmp_path / 'garbage'
  garbage.write_bytes(os.urandom(4096))
  _refused(garbage, str(garbage))

  truncated = tmp_path / 'truncated'
  truncated.write_bytes(open(path, 'rb').read()[:50_000])
  _refused(truncated, str(truncated))
  legacy = save_official(net, tmp_path / 'legacy',
                         _use_new_zipfile_serialization=False)
  truncated_legacy = tmp_path / 'truncated_legacy'
  truncated_legacy.write_bytes(open(legacy, 'rb').read()[:50_000])
  _refused(truncated_legacy, str(truncated_legacy))

  evil = tmp_path / 'evil'
  with open(evil, 'wb') as f:
    pickle.dump({'epoch': 1, 'network': _RunsCode()}, f, protocol=2)
  _refused(evil, str(evil), 'run code', 'refused for safety')
  evil_torch = tmp_path / 'evil_torch'
  torch.save({'epoch': 1, 'network': {'x': _RunsCode()}}, evil_torch)
  _refused(evil_torch, 'refused for safety')

  resnet = tmp_path / 'resnet'
  torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7),
              'bn1.weight': torch.zeros(64),
              'layer1.0.conv1.weight': torch.zeros(64, 64, 3, 3),
              'fc.weight': torch.zeros(1000, 512)}, resnet)
  _refused(resnet, str(resnet), 'not an official', 'conv1.weight')

  missing = dict(state)
  del missing['_feature_blocks.1.Block2_ConvB2.layers.BatchNorm.running_var']
  torch.save({'epoch': 3, 'network': missing}, tmp_path / 'missing')
  _refused(tmp_path / 'missing', 'missing keys',
           '_feature_blocks.1.Block2_ConvB2.layers.BatchNorm.running_var')

  extra = dict(state, **{f'extra.layer{i}.weight': torch.zeros(3)
                         for i in range(9)})
  torch.save({'epoch': 3, 'network': extra}, tmp_path / 'extra')
  _refused(tmp_path / 'extra', 'unexpected keys', 'extra.layer0.weight',
           '(and 3 more)')

  wrong = dict(state)
  wrong['_feature_blocks.2.Block3_ConvB1.layers.Conv.weight'] = torch.zeros(
      192, 192, 5, 5)
  torch.save({'epoch': 3, 'network': wrong}, tmp_path / 'wrong')
  _refused(tmp_path / 'wrong', 'wrong shapes',
           '_feature_blocks.2.Block3_ConvB1.layers.Conv.weight: '
           '(192, 192, 5, 5), expected (192, 192, 3, 3)')

  classifier = save_official(Classifier('MultLayer', 192 * 64, 10),
                             tmp_path / 'classifier_net_epoch100')
  _refused(classifier, 'MultLayer'.lower(), 'not a backbone',
           'rotnet_jax.import_torch', '--backbone')
  with pytest.raises(InputError, match='not a classifier'):
    torch_format.read_heads(path, torch_format.read(path).spec)

  not_a_dict = tmp_path / 'list'
  torch.save([torch.zeros(3)], not_a_dict)
  _refused(not_a_dict, 'not a state dict')


def test_without_torch_the_error_says_how_to_install(monkeypatch, nin3_file):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(InputError, match=r"pip install -e '\.\[torch\]'"):
    torch_format.read(nin3_file[0])


# ---------------------------------------------------------------------------
# The command.


def test_import_command_writes_a_workdir_evaluation_restores(
    tmp_path, nin3_file):
  path, _ = nin3_file
  out = tmp_path / 'imported'
  summary = import_torch.import_file(path, str(out))
  assert 'NIN-3' in summary and 'epoch 200' in summary
  imported = torch_format.read(path)

  config = config_schema.defaults()
  config.model.num_blocks = 3
  config.pretrained = str(out)
  restored = restore.load_backbone(config, parallel.make_mesh(
      jax.devices()[:1]))
  assert restored.spec == imported.spec
  for a, b in zip(jax.tree.leaves(restored.variables),
                  jax.tree.leaves(imported.variables)):
    np.testing.assert_array_equal(np.asarray(a), b)
  read_back = weights_lib.read(str(out))
  assert read_back.spec == imported.spec and read_back.heads is None
  checkpoints = checkpoint_lib.Checkpointer(str(out), read_only=True)
  try:
    meta = checkpoints.read_meta(checkpoints.latest_step())
  finally:
    checkpoints.close()
  assert meta['epoch'] == 200 and meta['network'] == {
      'backbone': imported.spec}
  assert meta['imported_from']['file'] == os.path.abspath(path)

  # An existing workdir is refused without --overwrite, kept as it was.
  before = sorted(os.listdir(out))
  with pytest.raises(InputError, match='--overwrite'):
    import_torch.import_file(path, str(out))
  assert sorted(os.listdir(out)) == before
  import_torch.import_file(path, str(out), overwrite=True)
  assert sorted(os.listdir(out)) == before
  assert [p for p in os.listdir(tmp_path) if p.startswith('.')] == []

  # A classifier file with its backbone: an evaluation workdir whose
  # weights hold both.
  classifier = save_official(randomize(Classifier('NIN_ConvBlock3', 192, 10),
                                       seed=5), tmp_path / 'classifier')
  heads_out = tmp_path / 'heads'
  import_torch.import_file(classifier, str(heads_out), backbone=str(out))
  both = weights_lib.read(str(heads_out))
  assert both.spec == imported.spec
  assert (both.heads.head_type, both.heads.blocks) == ('conv_block',
                                                       ('conv2',))
  want = torch_format.read_heads(classifier, imported.spec)
  for a, b in zip(jax.tree.leaves(both.heads.variables),
                  jax.tree.leaves(want.variables)):
    np.testing.assert_array_equal(a, b)
  # The backbone may be the official file itself.
  on_file = tmp_path / 'heads_on_file'
  import_torch.import_file(classifier, str(on_file), backbone=path,
                           block='conv3')
  both = weights_lib.read(str(on_file))
  assert both.origin['pretrained'] == os.path.abspath(path)
  assert both.heads.blocks == ('conv3',)
  np.testing.assert_array_equal(
      both.variables['params']['classifier']['kernel'],
      imported.variables['params']['classifier']['kernel'])


def _command(*args):
  return subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.import_torch', *map(str, args)],
      capture_output=True, text=True, cwd=helpers.REPO_ROOT, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


# Three processes: the slow tier (the default run imports in this process,
# test_import_command_writes_a_workdir_evaluation_restores, and refuses bad
# command input, test_bad_command_input_is_refused_before_writing).
@pytest.mark.slow
def test_command_line(tmp_path, nin3_file):
  """Bad input: one ``error:`` line, status 2, nothing written."""
  path, _ = nin3_file
  garbage = tmp_path / 'garbage'
  garbage.write_bytes(b'not a torch file')
  out = tmp_path / 'out'
  for args, text in [((garbage, f'--workdir={out}'), str(garbage)),
                     ((path,), '--workdir')]:
    result = _command(*args)
    assert result.returncode == 2, (args, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert text in lines[0], (args, lines[0])
  assert os.listdir(tmp_path) == ['garbage']

  result = _command(path, f'--workdir={out}')
  assert result.returncode == 0, result.stderr
  assert 'imported official NIN-3' in result.stdout
  assert sorted(os.listdir(out)) == ['checkpoints', 'config.json']


def test_bad_command_input_is_refused_before_writing(tmp_path, nin3_file):
  path, _ = nin3_file
  garbage = tmp_path / 'garbage'
  garbage.write_bytes(b'not a torch file')
  classifier = save_official(Classifier('MultLayer', 192 * 64, 10),
                             tmp_path / 'classifier')
  out = tmp_path / 'out'
  (tmp_path / 'a_file').write_text('x')
  cases = [
      (dict(path=classifier, workdir=out), '--backbone'),
      (dict(path=classifier, workdir=out, backbone=garbage), str(garbage)),
      (dict(path=classifier, workdir=out, backbone=path, block='conv9'),
       '--block=conv9'),
      (dict(path=path, workdir=out, backbone=path), 'only for a classifier'),
      (dict(path=path, workdir=tmp_path / 'a_file' / 'sub'), 'a_file'),
      (dict(path=path, workdir=''), '--workdir'),
      (dict(path=classifier, workdir=tmp_path, backbone=path,
            overwrite=True), 'inside --workdir'),
  ]
  for kwargs, text in cases:
    kwargs = {k: v if isinstance(v, bool) else str(v)
              for k, v in kwargs.items()}
    with pytest.raises(InputError) as error:
      import_torch.import_file(kwargs.pop('path'), kwargs.pop('workdir'),
                               **kwargs)
    assert text in str(error.value), (kwargs, str(error.value))
  assert sorted(os.listdir(tmp_path)) == ['a_file', 'classifier', 'garbage']


def test_a_failed_write_leaves_no_partial_workdir(tmp_path, nin3_file,
                                                  monkeypatch):
  path, _ = nin3_file
  out = tmp_path / 'out'

  def broken(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(import_torch.run_files, 'write_config', broken)
  with pytest.raises(InputError, match='cannot be written'):
    import_torch.import_file(path, str(out))
  assert os.listdir(tmp_path) == []
