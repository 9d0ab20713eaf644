"""Classifier heads trained on frozen (or fine-tuned) backbone features.

The heads of the RotNet evaluations, initialised like the official
code's classifiers: convolution kernels ``N(0, sqrt(2 / (k * k * C_out)))``,
linear weights ``N(0, sqrt(2 / fan_out))``, biases 0, BatchNorm scale 1 and
shift 0 (momentum 0.9 in Flax's convention, eps 1e-5).

* ``multlayer`` ("non-linear", Tables 1 and 2): flatten, Linear 200 (no
  bias), BN, ReLU, Linear 200 (no bias), BN, ReLU, Linear.
* ``conv_block`` ("conv", Table 3): one more block of the backbone's own
  kind (for the NIN, block 3: 3x3, 1x1, 1x1 conv-BN-ReLU), global average
  pool, Linear.
* ``linear`` (ImageNet probes): adaptive max-pool to ``s x s``, BatchNorm
  without scale or shift, flatten, Linear. ``s`` is ``linear_pool_size``,
  or with ``linear_pool_size=0`` the backbone's own side for the block
  (``Backbone.linear_pool_sizes``: AlexNet's 12, 7, 5, 6, 6).
* ``alexnet_nonlinear`` (ImageNet "non-linear" classifiers on AlexNet's
  conv4 and conv5, the official ``Alexnet_conv4`` / ``Alexnet_conv5``):
  on conv4 one more conv5-like layer (3x3 conv, BN, ReLU), then max-pool
  3/2, flatten, Linear 4096 (no bias), BN, ReLU, Linear 4096 (no bias),
  BN, ReLU, Linear: the rest of AlexNet, freshly initialised. Its 1-D
  BatchNorm scales start U(0, 1), as PyTorch 0.2's ``BatchNorm1d`` did
  (the official ``initilize()`` resets only ``BatchNorm2d``).

A head that depends on the block it reads (``alexnet_nonlinear``; the
``linear`` head with per-block sides) is told the block by
``make_head(..., block=...)``; without it, the block is found from the
feature shape when only one block has that shape.

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
    linear_pool_size: side of the ``linear`` head's max-pool; 0: the
      backbone's own side for the block (`linear_pool_sizes`).
    linear_pool_sizes: ``((block, side), ...)``, the backbone's own sides
      (``Backbone.linear_pool_sizes``); empty if it has none.
    feature_shapes: ``((block, (H, W, C)), ...)`` of every block, to find
      the block of a head from its feature shape when `block` is unset.
    backbone: the backbone's registry name.
    width: the backbone's width multiplier (hidden widths of the
      ``alexnet_nonlinear`` head scale with it).
    block: the block the head reads (set by :func:`make_head`).
  """
  make_block: Callable[..., nnx.Module] | None = None
  linear_pool_size: int = 6
  linear_pool_sizes: tuple[tuple[str, int], ...] = ()
  feature_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
  backbone: str | None = None
  width: float = 1.0
  block: str | None = None

  def find_block(self, feature_shape, *, why: str) -> str:
    """The block of the head: `block`, or the one block of `feature_shape`.

    Raises:
      ValueError: no block given and none or several have that shape.
    """
    if self.block is not None:
      return self.block
    fits = [b for b, s in self.feature_shapes
            if tuple(s) == tuple(feature_shape)]
    if len(fits) == 1:
      return fits[0]
    raise ValueError(
        f'{why} depends on the block it reads, and features of shape '
        f'{tuple(feature_shape)} fit {fits or "no block"}: pass '
        'make_head(..., block=NAME)')

  def pool_size(self, feature_shape) -> int:
    """The ``linear`` head's side for features of `feature_shape`.

    Raises:
      ValueError: ``linear_pool_size=0`` and the backbone has no sides of
        its own, or the block cannot be told (see :meth:`find_block`).
    """
    if self.linear_pool_size:
      return self.linear_pool_size
    sides = dict(self.linear_pool_sizes)
    if not sides:
      raise ValueError(
          f'linear_pool_size=0 selects the backbone\'s own pool side per '
          f'block, and the {self.backbone} backbone defines none: pass a '
          'side')
    candidates = ({sides[self.block]} if self.block is not None else
                  {sides[b] for b, s in self.feature_shapes
                   if tuple(s) == tuple(feature_shape) and b in sides})
    if len(candidates) == 1:
      return candidates.pop()
    return sides[self.find_block(feature_shape,
                                 why='the linear head with per-block sides')]


def _linear_kernel_init(fan_out: int):
  return jax.nn.initializers.normal(math.sqrt(2.0 / fan_out))


def _conv_kernel_init(kernel_size: int, out_channels: int):
  return jax.nn.initializers.normal(
      math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))


def _batch_norm(features: int, *, use_scale_and_bias: bool = True, dtype,
                rngs, scale_init=jax.nn.initializers.ones) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=layers.BATCH_NORM_MOMENTUM,
                       epsilon=layers.BATCH_NORM_EPSILON,
                       use_scale=use_scale_and_bias,
                       use_bias=use_scale_and_bias, scale_init=scale_init,
                       dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


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


def adaptive_pool(x: jax.Array, size: int, reduce=jnp.max) -> jax.Array:
  """PyTorch's ``AdaptiveMaxPool2d(size)`` (or, with ``reduce=jnp.mean``,
  ``AdaptiveAvgPool2d``) on ``[B, H, W, C]``.

  Window ``i`` of an axis of length ``n`` spans
  ``[floor(i * n / size), ceil((i + 1) * n / size))``.
  """

  def windows(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

  rows = [reduce(x[:, r0:r1], axis=1) for r0, r1 in windows(x.shape[1])]
  x = jnp.stack(rows, axis=1)  # [B, size, W, C]
  cols = [reduce(x[:, :, c0:c1], axis=2) for c0, c1 in windows(x.shape[2])]
  return jnp.stack(cols, axis=2)


def adaptive_max_pool(x: jax.Array, size: int) -> jax.Array:
  """PyTorch's ``AdaptiveMaxPool2d(size)`` on ``[B, H, W, C]``."""
  return adaptive_pool(x, size, jnp.max)


def adaptive_average_pool(x: jax.Array, size: int) -> jax.Array:
  """PyTorch's ``AdaptiveAvgPool2d(size)`` on ``[B, H, W, C]``."""
  return adaptive_pool(x, size, jnp.mean)


class LinearHead(nnx.Module):
  """Adaptive max-pool, BatchNorm without affine parameters, linear layer."""

  def __init__(self, feature_shape, num_classes: int, options: HeadOptions,
               *, dtype=None, rngs: nnx.Rngs):
    channels = feature_shape[-1]
    pool_size = self.pool_size = options.pool_size(feature_shape)
    self.norm = _batch_norm(channels, use_scale_and_bias=False, dtype=dtype,
                            rngs=rngs)
    self.output = _linear(pool_size * pool_size * channels, num_classes,
                          use_bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = adaptive_max_pool(features, self.pool_size)
    x = self.norm(x, use_running_average=not train)
    return self.output(x.reshape((x.shape[0], -1))).astype(jnp.float32)


# Blocks the alexnet_nonlinear head reads (the official classifiers'), and
# whether it starts with one more conv layer there.
ALEXNET_NONLINEAR_BLOCKS = {'conv4': True, 'conv5': False}
ALEXNET_FC_WIDTH = 4096


class AlexNetNonLinearHead(nnx.Module):
  """The official ``Alexnet_conv4`` / ``Alexnet_conv5`` classifier.

  On conv4: a conv5-like layer (the backbone's ``head_block``), then, as on
  conv5: max-pool 3/2, flatten, Linear (no bias), BN, ReLU, Linear (no
  bias), BN, ReLU, Linear. The hidden width is 4096 x the backbone's width.
  """

  def __init__(self, feature_shape, num_classes: int, options: HeadOptions,
               *, dtype=None, rngs: nnx.Rngs):
    block = options.find_block(feature_shape, why='the alexnet_nonlinear '
                               'head (conv4 and conv5 differ)')
    if block not in ALEXNET_NONLINEAR_BLOCKS:
      raise ValueError(f'the alexnet_nonlinear head reads '
                       f'{tuple(ALEXNET_NONLINEAR_BLOCKS)}, not {block!r}')
    height, width, channels = feature_shape
    extra = None
    if ALEXNET_NONLINEAR_BLOCKS[block]:
      extra, channels = options.make_block(
          channels, kernel_init=_conv_kernel_init, dtype=dtype, rngs=rngs)
    # Assigned once: a module, or None (static) on conv5.
    self.block = extra
    side_h, side_w = (height - 3) // 2 + 1, (width - 3) // 2 + 1
    if min(side_h, side_w) < 1:
      raise ValueError(f'the alexnet_nonlinear head max-pools 3x3: features '
                       f'of shape {tuple(feature_shape)} are too small')
    hidden = max(1, int(round(ALEXNET_FC_WIDTH * options.width)))
    # PyTorch 0.2's BatchNorm1d default (the official classifiers keep it).
    uniform = jax.nn.initializers.uniform(1.0)
    self.linear1 = _linear(side_h * side_w * channels, hidden,
                           use_bias=False, dtype=dtype, rngs=rngs)
    self.norm1 = _batch_norm(hidden, scale_init=uniform, dtype=dtype,
                             rngs=rngs)
    self.linear2 = _linear(hidden, hidden, use_bias=False, dtype=dtype,
                           rngs=rngs)
    self.norm2 = _batch_norm(hidden, scale_init=uniform, dtype=dtype,
                             rngs=rngs)
    self.output = _linear(hidden, num_classes, use_bias=True, dtype=dtype,
                          rngs=rngs)

  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = features
    if self.block is not None:
      x = self.block(x, train=train)
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    x = x.reshape((x.shape[0], -1))
    x = nnx.relu(self.norm1(self.linear1(x), use_running_average=not train))
    x = nnx.relu(self.norm2(self.linear2(x), use_running_average=not train))
    return self.output(x).astype(jnp.float32)


HEADS = {'multlayer': MultLayerHead, 'conv_block': ConvBlockHead,
         'linear': LinearHead, 'alexnet_nonlinear': AlexNetNonLinearHead}
HEAD_TYPES = tuple(HEADS)


def make_head(head_type: str, feature_shape, num_classes: int,
              options: HeadOptions = HeadOptions(), *, block: str | None = None,
              dtype=None, rngs: nnx.Rngs) -> nnx.Module:
  """Builds a head of `head_type` for features of `feature_shape` (H, W, C).

  Args:
    head_type: a key of :data:`HEADS`.
    feature_shape: ``(H, W, C)`` of the block features it reads.
    num_classes: outputs.
    options: what the head may need besides (backbone block, pool size).
    block: the block it reads; heads that depend on it need it unless
      the feature shape tells (see :class:`HeadOptions`).
  """
  if head_type not in HEADS:
    raise ValueError(f'unknown head {head_type!r}; valid: {HEAD_TYPES}')
  if block is not None:
    options = dataclasses.replace(options, block=block)
  return HEADS[head_type](feature_shape, num_classes, options, dtype=dtype,
                          rngs=rngs)
