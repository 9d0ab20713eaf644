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

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rotnet_jax.errors import ConfigError
from rotnet_jax.models.backbone import Backbone
from rotnet_jax.models.backbone import KernelInitFactory
from rotnet_jax.models.layers import ConvBNReLU
from rotnet_jax.models.layers import torch_default_bias_init
from rotnet_jax.models.layers import torch_default_kernel_init

# Channels of the three convolutions of each block, before `width` scaling.
_BLOCK1_CHANNELS = (192, 160, 96)
_BLOCK_CHANNELS = (192, 192, 192)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch ``MaxPool2d(3, stride=2, padding=1)`` (pads with -inf)."""
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def avg_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch ``AvgPool2d(3, stride=2, padding=1)``: zero padding is counted."""
  return nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                      count_include_pad=True)


def scaled_channels(channels: int, width: float) -> int:
  """Channel count after the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def _torch_default_kernel_init_factory(kernel_size: int, out_channels: int):
  del kernel_size, out_channels
  return torch_default_kernel_init


class NINBlock(nnx.Module):
  """Three ConvBNReLU layers (first_kernel, 1x1, 1x1), then an optional pool.

  Args:
    kernel_init: ``(kernel_size, out_channels) -> initializer`` of each
      convolution (default: PyTorch's).
  """

  def __init__(self, in_channels: int, channels: Sequence[int],
               first_kernel: int, pool: str | None, *, dtype=None,
               kernel_init: KernelInitFactory = (
                   _torch_default_kernel_init_factory),
               rngs: nnx.Rngs):
    kernels = (first_kernel, 1, 1)
    ins = (in_channels,) + tuple(channels[:-1])
    self.layers = nnx.List([
        ConvBNReLU(i, o, k, dtype=dtype, kernel_init=kernel_init(k, o),
                   rngs=rngs)
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


def block_names(num_blocks: int) -> tuple[str, ...]:
  """``('conv1', ..., 'convN')``."""
  return tuple(f'conv{i + 1}' for i in range(num_blocks))


class NIN(nnx.Module):
  """The RotNet NIN with `num_blocks` blocks and a linear classifier.

  Attributes:
    block_names: ``('conv1', ..., 'convN')``, the keys of the feature dict.
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
    self.block_names = block_names(num_blocks)
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


class NINBackbone(Backbone):
  """The registry entry of the NIN (``config.model.name='nin'``).

  Spec: ``{'name', 'num_classes', 'num_blocks', 'width', 'image_size'}``.
  """

  name = 'nin'

  def spec(self, model_config, *, image_size: int,
           num_classes: int) -> dict[str, Any]:
    return {'name': self.name, 'num_classes': num_classes,
            'num_blocks': model_config.num_blocks,
            'width': model_config.width, 'image_size': image_size}

  def check_config(self, model_config) -> None:
    if model_config.num_blocks < 3:
      raise ConfigError(f'config.model.num_blocks={model_config.num_blocks}: '
                        'the NIN has at least 3 blocks')

  def block_names(self, spec: dict[str, Any]) -> tuple[str, ...]:
    return block_names(spec['num_blocks'])

  def build(self, spec: dict[str, Any], *, dtype, rngs: nnx.Rngs) -> NIN:
    return NIN(spec['num_classes'], num_blocks=spec['num_blocks'],
               width=spec['width'], dtype=dtype, rngs=rngs)

  def head_block(self, spec: dict[str, Any], in_channels: int, *,
                 kernel_init: KernelInitFactory, dtype,
                 rngs: nnx.Rngs) -> tuple[NINBlock, int]:
    """A block like block 3 (3x3, 1x1, 1x1 at the spec's width), no pool."""
    channels = tuple(scaled_channels(c, spec['width'])
                     for c in _BLOCK_CHANNELS)
    return NINBlock(in_channels, channels, 3, None, dtype=dtype,
                    kernel_init=kernel_init, rngs=rngs), channels[-1]
