"""The AlexNet backbone, its ImageNet heads and the ImageNet configs.

Full-width networks are only ever shaped (``eval_shape``), never
initialised; the one network that runs is 1/16 wide on 64-pixel images.
"""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import REPO_ROOT
from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax.errors import ConfigError
from rotnet_jax.models import alexnet
from rotnet_jax.models import heads

CONV_BLOCKS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


def _model_config(width=1.0, num_blocks=5):
  config = config_schema.defaults()
  config.model.name = 'alexnet'
  config.model.num_blocks = num_blocks
  config.model.width = width
  return config.model


def _spec(width=1.0, image_size=224, num_classes=4):
  return models.backbone_spec(_model_config(width), image_size=image_size,
                              num_classes=num_classes)


def _official_parameter_count(num_classes=4):
  """From the layer list of the official architectures/AlexNet.py."""
  count, previous = 0, 3
  for channels, kernel in ((64, 11), (192, 5), (384, 3), (256, 3),
                           (256, 3)):
    count += previous * channels * kernel * kernel + channels  # Conv2d.
    count += 2 * channels  # BatchNorm2d weight and bias.
    previous = channels
  count += 256 * 6 * 6 * 4096 + 2 * 4096  # Linear (no bias), BatchNorm1d.
  count += 4096 * 4096 + 2 * 4096
  return count + 4096 * num_classes + num_classes  # The classifier.


def test_feature_shapes_and_parameter_count_at_224():
  spec = _spec()
  assert spec == {'name': 'alexnet', 'num_classes': 4, 'num_blocks': 5,
                  'width': 1.0, 'image_size': 224}
  assert models.block_names(spec) == CONV_BLOCKS + ('fc_block',)
  assert models.feature_shapes(spec) == {
      'conv1': (55, 55, 64), 'conv2': (27, 27, 192), 'conv3': (13, 13, 384),
      'conv4': (13, 13, 256), 'conv5': (13, 13, 256),
      'fc_block': (1, 1, 4096)}
  abstract = models.abstract_variables(spec)
  params = abstract['params']
  assert params['fc_block']['linear1']['kernel'].shape == (9216, 4096)
  assert 'bias' not in params['fc_block']['linear1']
  assert params['conv1']['conv']['kernel'].shape == (11, 11, 3, 64)
  ours = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  assert ours == _official_parameter_count() == 57_030_724
  # Every BatchNorm has running statistics: 5 conv + 2 fc.
  assert len(abstract['batch_stats']) == 6
  assert sorted(abstract['batch_stats']['fc_block']) == ['norm1', 'norm2']


def test_width_scales_every_layer_and_the_spec_is_json():
  spec = _spec(width=1 / 16, image_size=64, num_classes=1000)
  assert models.feature_shapes(spec) == {
      'conv1': (15, 15, 4), 'conv2': (7, 7, 12), 'conv3': (3, 3, 24),
      'conv4': (3, 3, 16), 'conv5': (3, 3, 16), 'fc_block': (1, 1, 256)}
  import json  # pylint: disable=import-outside-toplevel
  assert json.loads(json.dumps(spec)) == spec


def test_image_size_below_the_minimum_is_refused_naming_it():
  assert alexnet.MIN_IMAGE_SIZE == 63
  assert alexnet.feature_sides(63)['pool5'] == 1
  assert alexnet.feature_sides(62)['pool5'] < 1
  _spec(image_size=63)
  with pytest.raises(ConfigError, match=r'config.image_size=62: too small '
                     r'for AlexNet.*at least 63x63'):
    _spec(image_size=62)
  config = _eval_config(image_size=32)
  with pytest.raises(ConfigError, match='at least 63x63'):
    models.check_config(config)


def test_num_blocks_must_be_five():
  config = _eval_config()
  config.model.num_blocks = 4
  with pytest.raises(ConfigError, match=r'config.model.num_blocks=4: '
                     r'AlexNet has exactly 5.*num_blocks=5'):
    models.check_config(config)


def _eval_config(head='linear', blocks=CONV_BLOCKS, image_size=224,
                 **overrides):
  config = config_schema.evaluation_defaults(head)
  config.update_from_flattened_dict({
      'model.name': 'alexnet', 'model.num_blocks': 5, 'model.width': 1.0,
      'image_size': image_size, 'pretrained': '/nonexistent/pretext',
      'blocks': blocks, **overrides})
  return config_schema.validate(config)


def test_linear_pool_size_zero_gives_the_official_sides():
  spec = _spec()
  assert models.get_backbone('alexnet').linear_pool_sizes(spec) == {
      'conv1': 12, 'conv2': 7, 'conv3': 5, 'conv4': 6, 'conv5': 6,
      'fc_block': 1}
  # Smaller images: each side at most its block's.
  small = models.get_backbone('alexnet').linear_pool_sizes(
      _spec(width=1 / 16, image_size=64))
  assert small == {'conv1': 12, 'conv2': 7, 'conv3': 3, 'conv4': 3,
                   'conv5': 3, 'fc_block': 1}
  options = models.head_options(spec, linear_pool_size=0)
  shapes = models.feature_shapes(spec)
  for block, side in (('conv1', 12), ('conv2', 7), ('conv3', 5),
                      ('conv4', 6), ('conv5', 6)):
    for told in (block, None):  # Told the block, or found from the shape.
      head = nnx.eval_shape(lambda b=block, t=told: heads.make_head(
          'linear', shapes[b], 1000, options, block=t, rngs=nnx.Rngs(0)))
      assert head.pool_size == side
      assert head.output.kernel.shape == (side * side * shapes[block][-1],
                                          1000)
  models.check_config(_eval_config(linear_pool_size=0))
  # A fixed side still works, and must fit the smallest block read.
  models.check_config(_eval_config(linear_pool_size=6))
  with pytest.raises(ConfigError, match='use at most 1'):
    models.check_config(_eval_config(blocks=(), linear_pool_size=6))


def test_linear_pool_size_zero_needs_a_backbone_that_has_sides():
  config = config_schema.evaluation_defaults('linear')
  config.update_from_flattened_dict({
      'model.name': 'nin', 'model.num_blocks': 4, 'model.width': 1.0,
      'image_size': 32, 'pretrained': 'random', 'linear_pool_size': 0})
  with pytest.raises(ConfigError, match=r'linear_pool_size=0.*the nin '
                     r'backbone has none'):
    models.check_config(config_schema.validate(config))


def test_alexnet_nonlinear_head_layers_and_blocks():
  spec = _spec()
  options = models.head_options(spec, linear_pool_size=6)
  shapes = models.feature_shapes(spec)
  conv4 = nnx.eval_shape(lambda: heads.make_head(
      'alexnet_nonlinear', shapes['conv4'], 1000, options, block='conv4',
      rngs=nnx.Rngs(0)))
  conv5 = nnx.eval_shape(lambda: heads.make_head(
      'alexnet_nonlinear', shapes['conv5'], 1000, options, block='conv5',
      rngs=nnx.Rngs(0)))
  # conv4: the official ConvB5 (3x3 conv with bias, BN) first.
  assert conv4.block.conv.kernel.shape == (3, 3, 256, 256)
  assert conv4.block.conv.bias.shape == (256,)
  assert conv5.block is None
  for head in (conv4, conv5):
    assert head.linear1.kernel.shape == (9216, 4096)
    assert head.linear1.bias is None and head.linear2.bias is None
    assert head.linear2.kernel.shape == (4096, 4096)
    assert head.output.kernel.shape == (4096, 1000)
  # conv4 and conv5 have the same shape: without the block it cannot tell.
  with pytest.raises(ValueError, match=r"fit \['conv4', 'conv5'\]"):
    heads.make_head('alexnet_nonlinear', shapes['conv5'], 10, options,
                    rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="not 'conv3'"):
    heads.make_head('alexnet_nonlinear', shapes['conv3'], 10, options,
                    block='conv3', rngs=nnx.Rngs(0))
  # The config checks say the same before a run starts.
  models.check_config(_eval_config('alexnet_nonlinear', ('conv4', 'conv5')))
  for blocks in ((), ('conv3',)):
    with pytest.raises(ConfigError, match=r"reads \('conv4', 'conv5'\) "
                       'only'):
      models.check_config(_eval_config('alexnet_nonlinear', blocks))
  nin = config_schema.evaluation_defaults('alexnet_nonlinear')
  nin.update_from_flattened_dict({
      'model.name': 'nin', 'model.num_blocks': 4, 'model.width': 1.0,
      'image_size': 32, 'pretrained': 'random', 'blocks': ('conv4',)})
  with pytest.raises(ConfigError, match="model.name='nin'"):
    models.check_config(config_schema.validate(nin))


def test_conv_block_head_is_a_conv5_like_layer():
  spec = _spec()
  head = nnx.eval_shape(lambda: heads.make_head(
      'conv_block', (13, 13, 384), 1000,
      models.head_options(spec, linear_pool_size=6), rngs=nnx.Rngs(0)))
  assert head.block.conv.kernel.shape == (3, 3, 384, 256)
  assert head.output.kernel.shape == (256, 1000)


# Compiling the AlexNet's initialisation alone takes half a minute on CPU:
# the slow tier (the default run traces the network above and runs an
# imported one against PyTorch, test_alexnet_parity.py).
@pytest.mark.slow
def test_small_alexnet_forward_heads_and_train_steps():
  """1/16 width, 64-pixel images: every layer runs, jitted, and learns."""
  spec = _spec(width=1 / 16, image_size=64, num_classes=4)
  # Initialised under jit (eagerly, every initializer compiles on its own).
  variables = jax.jit(lambda: models.init_variables(spec, 0))()
  graphdef = models.backbone_graphdef(spec, jnp.float32)
  # Plain dicts: merged into fresh variables inside each trace.
  params, stats = variables['params'], variables['batch_stats']
  x = jax.random.normal(jax.random.key(1), (8, 64, 64, 3))
  y = jnp.arange(8) % 4

  @jax.jit
  def forward(params, stats, x):
    logits, features = nnx.merge(graphdef, params, stats)(x, train=False)
    return logits, features

  logits, features = forward(params, stats, x)
  assert logits.shape == (8, 4) and logits.dtype == jnp.float32
  assert {k: v.shape[1:] for k, v in features.items()} == models.feature_shapes(
      spec)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in features.values())
  # up_to stops early: no logits, no later blocks.
  logits, early = nnx.merge(graphdef, params, stats)(x, train=False,
                                                     up_to='conv3')
  assert logits is None and list(early) == ['conv1', 'conv2', 'conv3']

  @jax.jit
  def train_step(params, stats, x, y):
    def loss_fn(params):
      net = nnx.merge(graphdef, params, stats)
      logits, _ = net(x, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return loss.mean(), nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), stats, loss

  losses = []
  new_params, new_stats = params, stats
  for _ in range(6):
    new_params, new_stats, loss = train_step(new_params, new_stats, x, y)
    losses.append(float(loss))
  assert losses[-1] < losses[0], losses
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), stats,
                       new_stats)
  assert min(jax.tree.leaves(moved)) > 0  # Every BatchNorm was updated.

  # Both ImageNet heads on these features, built and run in one program.
  options = models.head_options(spec, linear_pool_size=0)
  shapes = models.feature_shapes(spec)
  for head_type, blocks in (('linear', ('conv1', 'conv3', 'fc_block')),
                            ('alexnet_nonlinear', ('conv4', 'conv5'))):
    for block in blocks:
      out = jax.jit(lambda f, t=head_type, b=block: heads.make_head(
          t, shapes[b], 10, options, block=b, rngs=nnx.Rngs(2))(
              f, train=True))(features[block])
      assert out.shape == (8, 10) and out.dtype == jnp.float32, block
      assert bool(jnp.all(jnp.isfinite(out))), block


# ---------------------------------------------------------------------------
# The ImageNet configs.

CONFIGS = {
    'imagenet_rotnet_alexnet': dict(
        mode='pretext', num_epochs=50, learning_rate_table=(
            (15, 0.01), (30, 0.001), (45, 0.0001), (50, 0.00001))),
    'imagenet_linear_probes': dict(
        mode='evaluate', head='linear', num_epochs=35, linear_pool_size=0,
        blocks=CONV_BLOCKS, dataset='imagenet2012', learning_rate_table=(
            (5, 0.01), (15, 0.002), (25, 0.0004), (35, 0.00008))),
    'places_linear_probes': dict(
        mode='evaluate', head='linear', num_epochs=35, linear_pool_size=0,
        blocks=CONV_BLOCKS, dataset='places365_small', learning_rate_table=(
            (5, 0.01), (15, 0.002), (25, 0.0004), (35, 0.00008))),
    'imagenet_nonlinear_conv4': dict(
        mode='evaluate', head='alexnet_nonlinear', num_epochs=40,
        blocks=('conv4',), learning_rate_table=(
            (10, 0.01), (20, 0.002), (30, 0.0004), (40, 0.00008))),
    'imagenet_nonlinear_conv5': dict(
        mode='evaluate', head='alexnet_nonlinear', num_epochs=40,
        blocks=('conv5',), learning_rate_table=(
            (10, 0.01), (20, 0.002), (30, 0.0004), (40, 0.00008))),
}


def _load_config(name, *args):
  path = os.path.join(REPO_ROOT, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_imagenet_configs_are_the_official_recipes_and_validate(name):
  config = _load_config(name)
  for key, value in CONFIGS[name].items():
    assert config[key] == value, key
  assert (config.batch_size, config.weight_decay, config.momentum,
          config.nesterov) == (192, 5e-4, 0.9, True)
  np.testing.assert_allclose(config.mean_rgb, (123.675, 116.28, 103.53))
  np.testing.assert_allclose(config.std_rgb, (58.395, 57.12, 57.375))
  # The classifiers train on the official Scale(256), RandomCrop(224).
  assert (config.pipeline, config.augmentation) == ('tfdata', (
      'imagenet' if config.mode == 'pretext' else 'resize_crop'))
  assert config.test_split == 'validation'
  if config.mode == 'evaluate':
    # What the weights would say (validation.fill_shape_from_pretrained).
    assert config.model.name is None and config.image_size is None
    config.pretrained = '/data/rotnet/imagenet_rotnet_alexnet'
    config.update_from_flattened_dict({
        'model.name': 'alexnet', 'model.num_blocks': 5, 'model.width': 1.0,
        'image_size': 224})
  else:
    assert (config.model.name, config.model.num_blocks, config.image_size,
            config.dataset) == ('alexnet', 5, 224, 'imagenet2012')
  config = config_schema.validate(config)
  models.check_config(config)


def test_pretext_config_paper_variant():
  config = _load_config('imagenet_rotnet_alexnet', 'paper')
  assert config.num_epochs == 30
  assert config.learning_rate_table[-1][0] == 30
  models.check_config(config_schema.validate(config))
  with pytest.raises(ValueError, match='official'):
    _load_config('imagenet_rotnet_alexnet', 'other')
