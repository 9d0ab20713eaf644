"""The NIN backbone: size, shapes, init and layer details of the recipe."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rotnet_jax.models import nin
from rotnet_jax.models.nin import NIN


def _count_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _feature_shapes(model, size=32):
  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, train=False)

  logits, features = jax.eval_shape(
      forward, state, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  return logits.shape, {k: v.shape[1:] for k, v in features.items()}


def test_full_four_block_model_has_the_paper_size_and_feature_shapes():
  model = nnx.eval_shape(lambda: NIN(4, num_blocks=4, rngs=nnx.Rngs(0)))
  assert _count_params(model) == 1_411_140
  logits_shape, shapes = _feature_shapes(model)
  assert logits_shape == (2, 4)
  assert shapes == {'conv1': (16, 16, 96), 'conv2': (8, 8, 192),
                    'conv3': (8, 8, 192), 'conv4': (8, 8, 192)}


@pytest.mark.parametrize('num_blocks', [3, 5])
def test_block_count_sets_the_named_features(num_blocks):
  model = nnx.eval_shape(lambda: NIN(10, num_blocks=num_blocks,
                                     rngs=nnx.Rngs(0)))
  _, shapes = _feature_shapes(model)
  assert list(shapes) == [f'conv{i + 1}' for i in range(num_blocks)]
  assert all(shapes[f'conv{i}'] == (8, 8, 192)
             for i in range(2, num_blocks + 1))
  assert shapes['conv1'] == (16, 16, 96)


def test_width_scales_every_layer():
  model = nnx.eval_shape(lambda: NIN(4, width=0.25, rngs=nnx.Rngs(0)))
  _, shapes = _feature_shapes(model)
  assert shapes['conv1'] == (16, 16, 24) and shapes['conv4'] == (8, 8, 48)
  channels = [layer.conv.kernel.shape[-1] for block in model.blocks
              for layer in block.layers]
  assert channels == [48, 40, 24] + [48] * 9


def test_rejects_too_few_blocks_and_bad_width():
  with pytest.raises(ValueError, match='num_blocks'):
    NIN(4, num_blocks=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='width'):
    NIN(4, width=0.0, rngs=nnx.Rngs(0))


def test_pytorch_default_init_and_batchnorm_settings():
  model = nnx.jit(lambda: NIN(4, num_blocks=3, width=0.5,
                              rngs=nnx.Rngs(0)))()
  first = model.blocks[0].layers[0]
  kernel = np.asarray(first.conv.kernel[...])
  fan_in = 5 * 5 * 3
  bound = 1 / math.sqrt(fan_in)
  assert first.conv.bias is None
  assert np.abs(kernel).max() <= bound
  # Uniform on [-b, b] has standard deviation b / sqrt(3).
  assert abs(kernel.std() - bound / math.sqrt(3)) < 0.05 * bound
  linear_bound = 1 / math.sqrt(96)
  assert np.abs(np.asarray(model.classifier.bias[...])).max() <= linear_bound
  assert np.abs(np.asarray(model.classifier.bias[...])).max() > 0
  np.testing.assert_array_equal(first.norm.scale[...], 1.0)
  np.testing.assert_array_equal(first.norm.bias[...], 0.0)
  assert first.norm.momentum == 0.9 and first.norm.epsilon == 1e-5


def test_pools_follow_pytorch_padding_rules():
  ones = jnp.ones((1, 4, 4, 1))
  # AvgPool2d(3, 2, 1) counts the zero padding: the corner window has 4 of 9.
  avg = nin.avg_pool_3x3_s2(ones)
  assert avg.shape == (1, 2, 2, 1)
  np.testing.assert_allclose(avg[0, 0, 0, 0], 4 / 9, rtol=1e-6)
  # MaxPool2d(3, 2, 1) pads with -inf: an all-negative input stays negative.
  assert float(nin.max_pool_3x3_s2(-ones)[0, 0, 0, 0]) == -1.0


def test_train_mode_updates_running_stats_and_eval_mode_uses_them():
  model = nnx.jit(lambda: NIN(4, num_blocks=3, width=1 / 16,
                              rngs=nnx.Rngs(0)))()
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) + 3.0

  @nnx.jit(static_argnames='train')
  def run(model, x, train):
    return model(x, train=train)[0]

  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  logits_eval = run(model, x, False)
  unchanged = nnx.state(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, unchanged)
  run(model, x, True)
  # The running mean moved by 0.1 x the batch mean of the first conv output.
  first = model.blocks[0].layers[0]
  conv_out = nnx.jit(lambda conv, x: conv(x))(first.conv, x)
  np.testing.assert_allclose(first.norm.mean[...],
                             0.1 * np.asarray(conv_out).mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  logits_eval2 = run(model, x, False)
  assert not np.allclose(logits_eval, logits_eval2)
