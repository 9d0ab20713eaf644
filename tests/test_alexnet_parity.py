"""Parity with the official PyTorch AlexNet of RotNet, and importing it.

A PyTorch AlexNet is written here after the official definition
(``architectures/AlexNet.py`` of FeatureLearningRotNet): the same
``_feature_blocks`` module list (conv1, pool1, conv2, pool2, conv3, conv4,
conv5, pool5, fc_block, classifier), so its ``state_dict()`` keys are those
of the released ``ImageNet_RotNet_AlexNet`` file. Its channel counts and
the fc width are scaled (``width``) and the images are small, so that every
layer, the fc block included, runs in well under a second on a CPU.
Random weights with non-trivial BatchNorm statistics are saved the
official way, imported with ``rotnet_jax.weights.torch_format``, and every
named feature and the logits must match PyTorch's.

Skipped when PyTorch is not installed.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
# pylint: disable=g-import-not-at-top,wrong-import-position
from torch import nn

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.training import import_official as import_torch
from rotnet_jax.training import validation
from rotnet_jax.weights import restore
from rotnet_jax.weights import torch_format

torch.set_num_threads(2)

# As tests/test_torch_parity.py: max|ours - torch| / max|torch|.
FORWARD_TOLERANCE = 1e-4
WIDTH = 1 / 8
IMAGE_SIZE = 112  # conv1 27, conv2 13, conv3-5 6, pool5 2x2.


def scaled(channels, width=WIDTH):
  return max(1, int(round(channels * width)))


class Flatten(nn.Module):

  def forward(self, x):
    return x.reshape(x.shape[0], -1)  # Channel-major: x is NCHW.


def _conv(in_channels, out_channels, kernel_size, **kwargs):
  return nn.Sequential(
      nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs),
      nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class AlexNet(nn.Module):
  """The official RotNet AlexNet; forward returns every block's output."""

  def __init__(self, num_classes, width=1.0, image_size=224):
    super().__init__()
    c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
    fc = scaled(4096, width)
    side = image_size
    side = (side + 4 - 11) // 4 + 1  # conv1
    side = (((side - 3) // 2 + 1 - 3) // 2 + 1 - 3) // 2 + 1  # pools 1, 2, 5
    self._feature_blocks = nn.ModuleList([
        _conv(3, c1, 11, stride=4, padding=2),
        nn.MaxPool2d(kernel_size=3, stride=2),
        _conv(c1, c2, 5, padding=2),
        nn.MaxPool2d(kernel_size=3, stride=2),
        _conv(c2, c3, 3, padding=1),
        _conv(c3, c4, 3, padding=1),
        _conv(c4, c5, 3, padding=1),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Sequential(Flatten(), nn.Linear(side * side * c5, fc, bias=False),
                      nn.BatchNorm1d(fc), nn.ReLU(inplace=True),
                      nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc),
                      nn.ReLU(inplace=True)),
        nn.Sequential(nn.Linear(fc, num_classes)),
    ])
    self.all_feat_names = ['conv1', 'pool1', 'conv2', 'pool2', 'conv3',
                           'conv4', 'conv5', 'pool5', 'fc_block',
                           'classifier']

  def forward(self, x):
    outputs = {}
    for name, block in zip(self.all_feat_names, self._feature_blocks):
      x = block(x)
      outputs[name] = x
    return outputs


def randomize(net, seed):
  """Random weights and non-trivial BatchNorm statistics (so that using the
  wrong ones, or none, shows)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = math.prod(module.weight.shape[1:])
        module.weight.normal_(0, math.sqrt(2.0 / fan_in),
                              generator=generator)
        if module.bias is not None:
          module.bias.uniform_(-0.1, 0.1, generator=generator)
      elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.affine:  # The linear probes' BatchNorm has none.
          module.weight.uniform_(0, 1, generator=generator)
          module.bias.uniform_(-0.2, 0.2, generator=generator)
        module.running_mean.uniform_(-0.3, 0.3, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
  return net


def save_official(net, path, epoch=50):
  torch.save({'epoch': epoch, 'network': net.state_dict()}, path)
  return str(path)


def relative(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def nhwc(tensor):
  array = tensor.detach().numpy()
  return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def images(count, size, seed=0):
  """Normalised random images, NHWC float32."""
  return np.random.default_rng(seed).normal(
      size=(count, size, size, 3)).astype(np.float32)


def our_forward(imported, x):
  model = nnx.merge(models.backbone_graphdef(imported.spec, jnp.float32),
                    imported.variables['params'],
                    imported.variables['batch_stats'])
  return model(jnp.asarray(x), train=False)


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  net = randomize(AlexNet(4, WIDTH, IMAGE_SIZE), seed=0).eval()
  path = save_official(net, tmp_path_factory.mktemp('alexnet') /
                       'model_net_epoch50')
  return path, net


def test_imported_alexnet_computes_what_pytorch_computes(official):
  path, net = official
  imported = torch_format.read(path, image_size=IMAGE_SIZE)
  assert imported.spec == {'name': 'alexnet', 'num_classes': 4,
                           'num_blocks': 5, 'width': WIDTH,
                           'image_size': IMAGE_SIZE}
  # Exactly the tree (and dtypes) of a freshly initialised network.
  want = models.abstract_variables(imported.spec)
  assert jax.tree.structure(imported.variables) == jax.tree.structure(want)
  for ours, theirs in zip(jax.tree.leaves(imported.variables),
                          jax.tree.leaves(want)):
    assert ours.shape == theirs.shape and ours.dtype == np.float32
  np.testing.assert_allclose(imported.mean_rgb,
                             (123.675, 116.28, 103.53))
  np.testing.assert_allclose(imported.std_rgb, (58.395, 57.12, 57.375))

  x = images(4, IMAGE_SIZE)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  logits, features = our_forward(imported, x)
  errors = {name: relative(features[name], nhwc(theirs[name]))
            for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')}
  errors['fc_block'] = relative(features['fc_block'][:, 0, 0],
                                theirs['fc_block'].numpy())
  errors['logits'] = relative(logits, theirs['classifier'].numpy())
  print('AlexNet (width 1/8, 112 px) max relative differences:', errors)
  assert max(errors.values()) < FORWARD_TOLERANCE, errors
  # The fc block is not trivially 0 or saturated: the check means something.
  assert np.mean(np.asarray(features['fc_block']) > 0) > 0.2


def test_image_size_is_inferred_and_checked(official):
  path, _ = official
  # pool5 is 2x2 from 95 pixels on (94 gives 1x1); the smallest is taken.
  assert torch_format.read(path).spec['image_size'] == 95
  with pytest.raises(InputError, match='image size 224 does not fit'):
    torch_format.read(path, image_size=224)
  # weights.read sends an official AlexNet file here too.
  assert weights_lib.read(path).spec['name'] == 'alexnet'


def test_full_size_file_is_a_224_pixel_alexnet(tmp_path):
  """The released file's shape: 57,030,724 parameters, 224-pixel images."""
  net = AlexNet(4)
  assert sum(p.numel() for p in net.parameters()) == 57_030_724
  path = save_official(net, tmp_path / 'model_net_epoch50')
  imported = torch_format.read(path)
  assert imported.spec == {'name': 'alexnet', 'num_classes': 4,
                           'num_blocks': 5, 'width': 1.0, 'image_size': 224}
  state = net.state_dict()
  # conv1 is OIHW there, HWIO here; fc1 reads pool5 channel-major there.
  np.testing.assert_array_equal(
      imported.variables['params']['conv1']['conv']['kernel'],
      state['_feature_blocks.0.0.weight'].numpy().transpose(2, 3, 1, 0))
  fc1 = state['_feature_blocks.8.1.weight'].numpy()  # [4096, 256*6*6]
  ours = imported.variables['params']['fc_block']['linear1']['kernel']
  c, h, w = 17, 2, 5  # Channel 17 at row 2, column 5 of pool5.
  np.testing.assert_array_equal(ours[(h * 6 + w) * 256 + c],
                                fc1[:, c * 36 + h * 6 + w])


def test_import_command_and_restore(official, tmp_path):
  path, _ = official
  out = tmp_path / 'imported'
  summary = import_torch.import_file(path, str(out), image_size=IMAGE_SIZE)
  assert 'AlexNet' in summary and 'epoch 50' in summary
  read_back = weights_lib.read(str(out))
  assert read_back.spec['image_size'] == IMAGE_SIZE
  np.testing.assert_allclose(read_back.mean_rgb,
                             torch_format.IMAGENET_MEAN_RGB)
  # An evaluation config with the shape keys unset takes them from it.
  config = config_schema.evaluation_defaults('linear')
  config.pretrained = str(out)
  config.linear_pool_size = 0
  config.mean_rgb = torch_format.IMAGENET_MEAN_RGB
  config.std_rgb = torch_format.IMAGENET_STD_RGB
  validation.fill_shape_from_pretrained(config, must_exist=True)
  assert (config.model.name, config.model.num_blocks, config.image_size) == (
      'alexnet', 5, IMAGE_SIZE)
  models.check_config(config)
  restored = restore.load_backbone(config, parallel.make_mesh(
      jax.devices()[:1]))
  assert restored.spec == read_back.spec
  # A NIN flag is refused for an AlexNet file.
  with pytest.raises(InputError, match='only for an AlexNet'):
    torch_format.read(_nin_file(tmp_path), image_size=64)


def _nin_file(tmp_path):
  from test_torch_parity import NetworkInNetwork  # pylint: disable=import-outside-toplevel
  return save_official(NetworkInNetwork(4, 3), tmp_path / 'nin', epoch=1)


def test_wrong_files_are_refused(official, tmp_path):
  path, net = official
  state = net.state_dict()
  missing = dict(state)
  del missing['_feature_blocks.8.5.running_var']
  torch.save({'network': missing}, tmp_path / 'missing')
  with pytest.raises(InputError, match=r'missing keys '
                     r'_feature_blocks\.8\.5\.running_var'):
    torch_format.read(str(tmp_path / 'missing'))
  wrong = dict(state)
  wrong['_feature_blocks.5.0.weight'] = torch.zeros(32, 48, 5, 5)
  torch.save({'network': wrong}, tmp_path / 'wrong')
  with pytest.raises(InputError, match=r'_feature_blocks\.5\.0\.weight: '
                     r'\(32, 48, 5, 5\), expected \(32, 48, 3, 3\)'):
    torch_format.read(str(tmp_path / 'wrong'))
  assert os.path.exists(path)


# ---------------------------------------------------------------------------
# The ImageNet classifiers (architectures/LinearClassifier.py,
# NonLinearClassifier.py, Multiple*Classifiers.py), official module names.


class LinearClassifier(nn.Module):

  def __init__(self, channels, pool_size, num_classes):
    super().__init__()
    self.classifier = nn.Sequential()
    self.classifier.add_module('MaxPool', nn.AdaptiveMaxPool2d(
        (pool_size, pool_size)))
    self.classifier.add_module('BatchNorm', nn.BatchNorm2d(channels,
                                                           affine=False))
    self.classifier.add_module('Flatten', Flatten())
    self.classifier.add_module('LiniearClassifier', nn.Linear(
        channels * pool_size * pool_size, num_classes))

  def forward(self, x):
    return self.classifier(x)


class AlexNetClassifier(nn.Module):
  """``Alexnet_conv4`` (with ``ConvB5``) or ``Alexnet_conv5``."""

  def __init__(self, conv4, channels, side, hidden, num_classes):
    super().__init__()
    self.classifier = nn.Sequential()
    if conv4:
      self.classifier.add_module('ConvB5', _conv(channels, channels, 3,
                                                 padding=1))
    self.classifier.add_module('Pool5', nn.MaxPool2d(kernel_size=3,
                                                     stride=2))
    self.classifier.add_module('Flatten', Flatten())
    pooled = (side - 3) // 2 + 1
    self.classifier.add_module('Linear1', nn.Linear(
        channels * pooled * pooled, hidden, bias=False))
    self.classifier.add_module('BatchNorm1', nn.BatchNorm1d(hidden))
    self.classifier.add_module('ReLU1', nn.ReLU(inplace=True))
    self.classifier.add_module('Liniear2', nn.Linear(hidden, hidden,
                                                     bias=False))
    self.classifier.add_module('BatchNorm2', nn.BatchNorm1d(hidden))
    self.classifier.add_module('ReLU2', nn.ReLU(inplace=True))
    self.classifier.add_module('LinearF', nn.Linear(hidden, num_classes))

  def forward(self, x):
    return self.classifier(x)


class MultipleClassifiers(nn.Module):

  def __init__(self, classifiers):
    super().__init__()
    self.classifiers = nn.ModuleList(classifiers)


def _head_outputs(heads, spec, features):
  shapes = models.feature_shapes(spec)
  outputs = {}
  for block in heads.blocks:
    side = 6
    if heads.head_type == 'linear':
      kernel = heads.variables['params'][block]['output']['kernel']
      side = math.isqrt(kernel.shape[0] // shapes[block][-1])
    head = nnx.eval_shape(lambda b=block, s=side: models.heads.make_head(
        heads.head_type, shapes[b], heads.num_classes,
        models.head_options(spec, linear_pool_size=s), block=b,
        rngs=nnx.Rngs(0)))
    outputs[block] = nnx.merge(
        nnx.graphdef(head), heads.variables['params'][block],
        heads.variables['batch_stats'][block])(
            jnp.asarray(features[block]), train=False)
  return outputs


# Every ImageNet head of the official AlexNet: the slow tier (the default
# run checks the imported AlexNet itself, above).
@pytest.mark.slow
def test_imported_imagenet_classifiers_compute_what_pytorch_computes(
    official, tmp_path):
  path, net = official
  backbone = torch_format.read(path, image_size=IMAGE_SIZE)
  x = images(4, IMAGE_SIZE, seed=1)
  with torch.no_grad():
    feats = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  ours_feats = {k: nhwc(v) for k, v in feats.items()}
  channels = {b: scaled(c) for b, c in zip(
      ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'),
      (64, 192, 384, 256, 256))}
  errors = {}

  # One linear probe per conv block, the official sides 12, 7, 5, 6, 6.
  linear = randomize(MultipleClassifiers([
      LinearClassifier(channels[b], side, 10) for b, side in
      (('conv1', 12), ('conv2', 7), ('conv3', 5), ('conv4', 6),
       ('conv5', 6))]), seed=11).eval()
  linear_path = save_official(linear, tmp_path / 'classifier_net_epoch35',
                              epoch=35)
  assert torch_format.read_kind(linear_path) == ('linear', 35)
  heads = torch_format.read_heads(linear_path, backbone.spec)
  assert (heads.head_type, heads.blocks, heads.num_classes) == (
      'linear', ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'), 10)
  ours = _head_outputs(heads, backbone.spec, ours_feats)
  with torch.no_grad():
    for i, block in enumerate(heads.blocks):
      theirs = linear.classifiers[i](feats[block]).numpy()
      errors[f'linear {block}'] = relative(ours[block], theirs)

  # The non-linear classifiers on conv4 and conv5.
  hidden = scaled(4096)
  nonlinear = randomize(MultipleClassifiers([
      AlexNetClassifier(True, channels['conv4'], 6, hidden, 10),
      AlexNetClassifier(False, channels['conv5'], 6, hidden, 10)]),
                        seed=12).eval()
  nonlinear_path = save_official(nonlinear, tmp_path / 'nonlinear')
  heads = torch_format.read_heads(nonlinear_path, backbone.spec)
  assert (heads.head_type, heads.blocks) == ('alexnet_nonlinear',
                                             ('conv4', 'conv5'))
  ours = _head_outputs(heads, backbone.spec, ours_feats)
  with torch.no_grad():
    for i, block in enumerate(heads.blocks):
      theirs = nonlinear.classifiers[i](feats[block]).numpy()
      errors[f'nonlinear {block}'] = relative(ours[block], theirs)
  print('AlexNet heads max relative differences:', errors)
  assert max(errors.values()) < FORWARD_TOLERANCE, errors

  # The import command writes evaluation workdirs with their configs.
  # The backbone's workdir says its image size (the file alone would give
  # 95 pixels, where conv4 is 5x5 and cannot be pooled to 6).
  base = tmp_path / 'backbone'
  import_torch.import_file(path, str(base), image_size=IMAGE_SIZE)
  out = tmp_path / 'probes'
  import_torch.import_file(linear_path, str(out), backbone=str(base))
  both = weights_lib.read(str(out))
  assert both.heads.blocks == ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
  with open(out / 'config.json') as f:
    saved = json.load(f)
  assert saved['linear_pool_size'] == 0, saved
  # A NIN is not their backbone.
  nin = _nin_file(tmp_path)
  with pytest.raises(InputError, match='pass the AlexNet backbone'):
    torch_format.read_heads(linear_path, torch_format.read(nin).spec)
