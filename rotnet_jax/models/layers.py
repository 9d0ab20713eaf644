"""Layers with PyTorch's conventions, shared by backbones and heads.

The official RotNet code is PyTorch: its BatchNorm momentum and epsilon
and its default initialisations are reproduced here, so the networks train
like the ones the paper measured.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's BatchNorm2d(momentum=0.1) keeps 0.9 of the old running average;
# Flax counts momentum the other way round.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

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
