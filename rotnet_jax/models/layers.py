"""Layers with PyTorch's conventions, shared by backbones and heads.

The official RotNet code is PyTorch: its BatchNorm momentum and epsilon
and its default initialisations are reproduced here, so the networks train
like the ones the paper measured.

Every convolution is built by :func:`conv`, the one place that decides how
a 1x1 convolution is computed (see :func:`conv1x1_form`).
"""

from collections.abc import Iterator
import contextlib
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


# How a 1x1 convolution (stride 1, no padding, dilation or groups) is
# computed: 'conv' (lax.conv_general_dilated) or 'matmul' (a product over
# channels with the same HWIO kernel, so parameters and checkpoints are the
# same either way).
CONV1X1_FORMS = ('conv', 'matmul')

# The form that is not slower, per backend. XLA's CPU convolution is slow
# for 1x1 kernels, above all backwards: on a 2-core CPU a 128x16x16x192 ->
# 160 one took 1.1-1.7x the matmul's time forwards and 7-12x forwards and
# backwards; the full-width NIN-4 train step ran 2.2-2.9x faster as
# matmuls (float32 and bfloat16) and configs/quick.py 1.2-1.4x (forwards
# alone at 1/16 width the two are within 0.2 ms). GPU and TPU were not
# measured, so they keep the convolution.
_CONV1X1_BY_BACKEND = {'cpu': 'matmul'}
_DEFAULT_CONV1X1 = 'conv'

# Set by the `conv1x1` context (benchmarks, tests); None: per backend.
_conv1x1_override: str | None = None


def conv1x1_form(backend: str | None = None) -> str:
  """The form new 1x1 convolutions take: ``'conv'`` or ``'matmul'``.

  The :func:`conv1x1` context's form if one is active, otherwise the one
  that is not slower on `backend` (default: JAX's default backend).
  """
  if _conv1x1_override is not None:
    return _conv1x1_override
  return _CONV1X1_BY_BACKEND.get(backend or jax.default_backend(),
                                 _DEFAULT_CONV1X1)


@contextlib.contextmanager
def conv1x1(form: str | None) -> Iterator[None]:
  """Builds the modules made inside with 1x1 convolutions as `form`.

  The form is fixed when a module is built (it is part of its static
  structure, nnx's graphdef, not of its parameters), so a network built
  inside keeps it when called or jitted later. None: the backend's form.
  """
  global _conv1x1_override
  if form is not None and form not in CONV1X1_FORMS:
    raise ValueError(f'1x1 convolution form {form!r}; valid: {CONV1X1_FORMS}')
  previous, _conv1x1_override = _conv1x1_override, form
  try:
    yield
  finally:
    _conv1x1_override = previous


_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def _pads_nothing(padding) -> bool:
  """Whether a 1x1 convolution with this padding keeps the spatial shape.

  `padding` as ``nnx.Conv`` takes it (a string, an int, ``(low, high)``
  pairs) or as it hands it on to ``conv_general_dilated``.
  """
  if isinstance(padding, str):
    return padding in ('SAME', 'VALID')
  if isinstance(padding, int):
    return padding == 0
  return all(tuple(p) == (0, 0) for p in padding)


def channel_product_conv(inputs, kernel, window_strides, padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=_NHWC_HWIO, feature_group_count=1,
                         precision=None, preferred_element_type=None,
                         out_sharding=None) -> jax.Array:
  """A 1x1 NHWC/HWIO convolution as one matrix product over channels.

  Takes ``lax.conv_general_dilated``'s arguments (``nnx.Conv`` calls it
  with them) and computes ``inputs @ kernel[0, 0]``. The batch and spatial
  axes are merged into one, so that the kernel's gradient is a plain
  matrix product too: with ``einsum('nhwc,cd->nhwd')`` the forward and
  backward pass took about 2x as long on CPU.

  Raises:
    ValueError: anything but a 1x1 convolution that leaves the spatial
      shape as it is (a misuse; :func:`conv` never installs it there).
  """
  ones = (1,) * (inputs.ndim - 2)
  expected = jax.lax.conv_dimension_numbers(inputs.shape, kernel.shape,
                                            _NHWC_HWIO)
  if (kernel.shape[:-2] != ones or tuple(window_strides) != ones
      or tuple(lhs_dilation or ones) != ones
      or tuple(rhs_dilation or ones) != ones or feature_group_count != 1
      or not _pads_nothing(padding)
      or dimension_numbers not in (expected, _NHWC_HWIO)
      or out_sharding is not None):
    raise ValueError(
        'channel_product_conv computes 1x1 NHWC/HWIO convolutions with '
        'stride 1 and no padding, dilation, groups or output sharding; got '
        f'kernel {kernel.shape}, strides {window_strides}, padding '
        f'{padding}, dilations {lhs_dilation}/{rhs_dilation}, '
        f'{feature_group_count} groups')
  flat = inputs.reshape((-1, inputs.shape[-1]))
  out = jnp.matmul(flat, kernel.reshape(kernel.shape[-2:]),
                   precision=precision,
                   preferred_element_type=preferred_element_type)
  return out.reshape(inputs.shape[:-1] + (kernel.shape[-1],))


def conv(in_channels: int, out_channels: int, kernel_size: int, *,
         stride: int = 1, padding='SAME', **kwargs) -> nnx.Conv:
  """A square ``nnx.Conv``, its 1x1 case in the :func:`conv1x1_form`.

  Args:
    in_channels: input channels.
    out_channels: output channels.
    kernel_size: side of the square kernel.
    stride: the same on both axes.
    padding: ``nnx.Conv``'s padding.
    **kwargs: the other arguments of ``nnx.Conv`` (not
      ``conv_general_dilated``, chosen here).

  Returns:
    The convolution, with the parameters an ``nnx.Conv`` of these
    arguments has (kernel HWIO ``[k, k, in, out]``, optional bias) in
    either form.
  """
  if (kernel_size == 1 and stride == 1 and _pads_nothing(padding)
      and conv1x1_form() == 'matmul'):
    kwargs['conv_general_dilated'] = channel_product_conv
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size),
                  strides=(stride, stride), padding=padding, **kwargs)


class ConvBNReLU(nnx.Module):
  """Conv (no bias, same padding) -> BatchNorm -> ReLU."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
               dtype=None, kernel_init=torch_default_kernel_init,
               rngs: nnx.Rngs):
    self.conv = conv(
        in_channels, out_channels, kernel_size, padding='SAME',
        use_bias=False, kernel_init=kernel_init, dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)
    self.norm = nnx.BatchNorm(
        out_channels, momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32,
        rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.conv(x)
    x = self.norm(x, use_running_average=not train)
    return nnx.relu(x)
