"""Network-In-Network (NIN) backbone of the RotNet CIFAR experiments.

Follows the official RotNet code (``NetworkInNetwork.py``): every convolution
is conv (no bias, same padding) -> BatchNorm -> ReLU, three per block.

  block 1: 5x5 192, 1x1 160, 1x1 96, max-pool 3/2 pad 1     (32 -> 16)
  block 2: 5x5 192, 1x1 192, 1x1 192, avg-pool 3/2 pad 1    (16 -> 8)
  block 3..N: 3x3 192, 1x1 192, 1x1 192                     (no pool)
  head: global average pool, Linear 192 -> num_classes

The model returns the logits and the output of every block, named
``conv1``..``convN`` (conv1 is 16x16x96, the others 8x8x192 at width 1), so
evaluation heads can read any block by name.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's BatchNorm2d(momentum=0.1) keeps 0.9 of the old running average;
# Flax counts momentum the other way round.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

# Channels of the three convolutions of each block, before `width` scaling.
_BLOCK1_CHANNELS = (192, 160, 96)
_BLOCK_CHANNELS = (192, 192, 192)

# PyTorch's default init for conv and linear weights: U(-1/sqrt(fan_in),
# +1/sqrt(fan_in)), i.e. variance scaling with scale 1/3, uniform.
torch_default_kernel_init = jax.nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


def torch_default_bias_init(fan_in: int) -> jax.nn.initializers.Initializer:
  """PyTorch's default bias init for a layer with `fan_in` inputs."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scaled_channels(channels: int, width: float) -> int:
  """Channel count after the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


class ConvBNReLU(nnx.Module):
  """Conv (no bias, same padding) -> BatchNorm -> ReLU."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
               dtype=None, kernel_init=torch_default_kernel_init,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(
        in_channels, out_channels, (kernel_size, kernel_size),
        padding='SAME', use_bias=False, kernel_init=kernel_init,
        dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.norm = nnx.BatchNorm(
        out_channels, momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32,
        rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.conv(x)
    x = self.norm(x, use_running_average=not train)
    return nnx.relu(x)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch ``MaxPool2d(3, stride=2, padding=1)`` (pads with -inf)."""
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def avg_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch ``AvgPool2d(3, stride=2, padding=1)``: zero padding is counted."""
  return nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                      count_include_pad=True)


class NINBlock(nnx.Module):
  """Three ConvBNReLU layers, then an optional pool."""

  def __init__(self, in_channels: int, channels: Sequence[int],
               first_kernel: int, pool: str | None, *, dtype=None,
               rngs: nnx.Rngs):
    kernels = (first_kernel, 1, 1)
    ins = (in_channels,) + tuple(channels[:-1])
    self.layers = nnx.List([
        ConvBNReLU(i, o, k, dtype=dtype, rngs=rngs)
        for i, o, k in zip(ins, channels, kernels)
    ])
    self.pool = pool

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for layer in self.layers:
      x = layer(x, train=train)
    if self.pool == 'max':
      x = max_pool_3x3_s2(x)
    elif self.pool == 'avg':
      x = avg_pool_3x3_s2(x)
    return x


class NIN(nnx.Module):
  """The RotNet NIN with `num_blocks` blocks and a linear classifier.

  Attributes:
    block_names: ``('conv1', ..., 'convN')``, the keys of the feature dict.
    feature_channels: channels of each block's output, by name.
  """

  def __init__(self, num_classes: int, *, num_blocks: int = 4,
               width: float = 1.0, in_channels: int = 3, dtype=None,
               rngs: nnx.Rngs):
    if num_blocks < 3:
      raise ValueError(f'NIN needs at least 3 blocks, got num_blocks={num_blocks}')
    if width <= 0:
      raise ValueError(f'model width must be positive, got width={width}')
    block1 = tuple(scaled_channels(c, width) for c in _BLOCK1_CHANNELS)
    later = tuple(scaled_channels(c, width) for c in _BLOCK_CHANNELS)
    blocks = [NINBlock(in_channels, block1, 5, 'max', dtype=dtype, rngs=rngs),
              NINBlock(block1[-1], later, 5, 'avg', dtype=dtype, rngs=rngs)]
    for _ in range(2, num_blocks):
      blocks.append(NINBlock(later[-1], later, 3, None, dtype=dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.block_names = tuple(f'conv{i + 1}' for i in range(num_blocks))
    self.feature_channels = dict(
        zip(self.block_names, (block1[-1],) + (later[-1],) * (num_blocks - 1)))
    self.classifier = nnx.Linear(
        later[-1], num_classes, kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(later[-1]), dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, up_to: str | None = None
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: normalised images ``[B, H, W, C]``.
      train: batch statistics (and their running-average update) if True,
        running averages if False.
      up_to: stop after this block (e.g. ``conv2``): later blocks and the
        classifier are not run (their BatchNorm statistics stay as they
        are) and the logits are None.

    Returns:
      ``(logits, features)``: float32 logits ``[B, num_classes]`` and a dict
      of the output of every block run, ``conv1``..``convN``.
    """
    if up_to is not None and up_to not in self.block_names:
      raise ValueError(f'up_to={up_to!r}; valid: {self.block_names}')
    features = {}
    for name, block in zip(self.block_names, self.blocks):
      x = block(x, train=train)
      features[name] = x
      if name == up_to:
        return None, features
    pooled = jnp.mean(x, axis=(1, 2))
    logits = self.classifier(pooled).astype(jnp.float32)
    return logits, features
