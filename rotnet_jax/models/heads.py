"""Classifier heads trained on frozen (or fine-tuned) backbone features.

The three heads of the RotNet evaluations, initialised like the official
code's classifiers: convolution kernels ``N(0, sqrt(2 / (k * k * C_out)))``,
linear weights ``N(0, sqrt(2 / fan_out))``, biases 0, BatchNorm scale 1 and
shift 0 (momentum 0.9 in Flax's convention, eps 1e-5).

* ``multlayer`` ("non-linear", Tables 1 and 2): flatten, Linear 200 (no
  bias), BN, ReLU, Linear 200 (no bias), BN, ReLU, Linear.
* ``conv_block`` ("conv", Table 3): one more block of the backbone's own
  kind (for the NIN, block 3: 3x3, 1x1, 1x1 conv-BN-ReLU), global average
  pool, Linear.
* ``linear`` (ImageNet probes): adaptive max-pool to ``s x s``, BatchNorm
  without scale or shift, flatten, Linear.

Every head is one class in :data:`HEADS`, built as
``Head(feature_shape, num_classes, options, dtype=..., rngs=...)`` and
called as ``head(features, train=...)`` -> float32 logits. To add a head:
write the class and add it to :data:`HEADS`.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rotnet_jax.models import layers

MULTLAYER_HIDDEN = 200


@dataclasses.dataclass(frozen=True)
class HeadOptions:
  """What a head may need besides the shape of the features it reads.

  Attributes:
    make_block: builds one more block of the backbone's kind,
      ``(in_channels, *, kernel_init, dtype, rngs) -> (module,
      out_channels)`` (``Backbone.head_block`` with the spec bound).
    linear_pool_size: side of the ``linear`` head's max-pool.
  """
  make_block: Callable[..., nnx.Module] | None = None
  linear_pool_size: int = 6


def _linear_kernel_init(fan_out: int):
  return jax.nn.initializers.normal(math.sqrt(2.0 / fan_out))


def _conv_kernel_init(kernel_size: int, out_channels: int):
  return jax.nn.initializers.normal(
      math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))


def _batch_norm(features: int, *, use_scale_and_bias: bool = True, dtype,
                rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=layers.BATCH_NORM_MOMENTUM,
                       epsilon=layers.BATCH_NORM_EPSILON,
                       use_scale=use_scale_and_bias,
                       use_bias=use_scale_and_bias, dtype=dtype,
                       param_dtype=jnp.float32, rngs=rngs)


def _linear(in_features, out_features, *, use_bias, dtype, rngs):
  return nnx.Linear(in_features, out_features, use_bias=use_bias,
                    kernel_init=_linear_kernel_init(out_features),
                    bias_init=jax.nn.initializers.zeros, dtype=dtype,
                    param_dtype=jnp.float32, rngs=rngs)


class MultLayerHead(nnx.Module):
  """Two hidden fully connected layers with BatchNorm on flattened features."""

  def __init__(self, feature_shape, num_classes: int, options: HeadOptions,
               *, dtype=None, rngs: nnx.Rngs):
    del options  # Needs nothing more.
    in_features = math.prod(feature_shape)
    hidden = MULTLAYER_HIDDEN
    self.hidden1 = _linear(in_features, hidden, use_bias=False, dtype=dtype,
                           rngs=rngs)
    self.norm1 = _batch_norm(hidden, dtype=dtype, rngs=rngs)
    self.hidden2 = _linear(hidden, hidden, use_bias=False, dtype=dtype,
                           rngs=rngs)
    self.norm2 = _batch_norm(hidden, dtype=dtype, rngs=rngs)
    self.output = _linear(hidden, num_classes, use_bias=True, dtype=dtype,
                          rngs=rngs)

  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = features.reshape((features.shape[0], -1))
    x = nnx.relu(self.norm1(self.hidden1(x), use_running_average=not train))
    x = nnx.relu(self.norm2(self.hidden2(x), use_running_average=not train))
    return self.output(x).astype(jnp.float32)


class ConvBlockHead(nnx.Module):
  """One more backbone block, global average pool and a linear layer."""

  def __init__(self, feature_shape, num_classes: int, options: HeadOptions,
               *, dtype=None, rngs: nnx.Rngs):
    self.block, channels = options.make_block(
        feature_shape[-1], kernel_init=_conv_kernel_init, dtype=dtype,
        rngs=rngs)
    self.output = _linear(channels, num_classes, use_bias=True, dtype=dtype,
                          rngs=rngs)

  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = self.block(features, train=train)
    return self.output(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


def adaptive_max_pool(x: jax.Array, size: int) -> jax.Array:
  """PyTorch's ``AdaptiveMaxPool2d(size)`` on ``[B, H, W, C]``.

  Window ``i`` of an axis of length ``n`` spans
  ``[floor(i * n / size), ceil((i + 1) * n / size))``.
  """

  def windows(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

  rows = [jnp.max(x[:, r0:r1], axis=1) for r0, r1 in windows(x.shape[1])]
  x = jnp.stack(rows, axis=1)  # [B, size, W, C]
  cols = [jnp.max(x[:, :, c0:c1], axis=2) for c0, c1 in windows(x.shape[2])]
  return jnp.stack(cols, axis=2)


class LinearHead(nnx.Module):
  """Adaptive max-pool, BatchNorm without affine parameters, linear layer."""

  def __init__(self, feature_shape, num_classes: int, options: HeadOptions,
               *, dtype=None, rngs: nnx.Rngs):
    channels = feature_shape[-1]
    pool_size = self.pool_size = options.linear_pool_size
    self.norm = _batch_norm(channels, use_scale_and_bias=False, dtype=dtype,
                            rngs=rngs)
    self.output = _linear(pool_size * pool_size * channels, num_classes,
                          use_bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = adaptive_max_pool(features, self.pool_size)
    x = self.norm(x, use_running_average=not train)
    return self.output(x.reshape((x.shape[0], -1))).astype(jnp.float32)


HEADS = {'multlayer': MultLayerHead, 'conv_block': ConvBlockHead,
         'linear': LinearHead}
HEAD_TYPES = tuple(HEADS)


def make_head(head_type: str, feature_shape, num_classes: int,
              options: HeadOptions = HeadOptions(), *, dtype=None,
              rngs: nnx.Rngs) -> nnx.Module:
  """Builds a head of `head_type` for features of `feature_shape` (H, W, C).

  Args:
    head_type: a key of :data:`HEADS`.
    feature_shape: ``(H, W, C)`` of the block features it reads.
    num_classes: outputs.
    options: what the head may need besides (backbone block, pool size).
  """
  if head_type not in HEADS:
    raise ValueError(f'unknown head {head_type!r}; valid: {HEAD_TYPES}')
  return HEADS[head_type](feature_shape, num_classes, options, dtype=dtype,
                          rngs=rngs)
