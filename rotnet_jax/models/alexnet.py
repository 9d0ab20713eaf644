"""AlexNet backbone of the RotNet ImageNet and Places205 experiments.

Follows the official RotNet code (``architectures/AlexNet.py``): every
convolution has a bias and is followed by BatchNorm and ReLU; the
fully connected block has no biases, BatchNorm and ReLU, and no dropout.

  conv1: 11x11/4 pad 2, 64 -> BN -> ReLU          (224 -> 55)
  pool1: max 3/2                                  (55 -> 27)
  conv2: 5x5 pad 2, 192 -> BN -> ReLU             (27)
  pool2: max 3/2                                  (27 -> 13)
  conv3: 3x3 pad 1, 384 -> BN -> ReLU             (13)
  conv4: 3x3 pad 1, 256 -> BN -> ReLU             (13)
  conv5: 3x3 pad 1, 256 -> BN -> ReLU             (13)
  pool5: max 3/2                                  (13 -> 6)
  fc_block: flatten, Linear 9216 -> 4096 (no bias), BN, ReLU,
            Linear 4096 -> 4096 (no bias), BN, ReLU
  classifier: Linear 4096 -> num_classes

The named features are those of the official ``all_feat_names`` that heads
read: ``conv1``..``conv5`` (after the ReLU, before any pool: the official
``conv1`` block ends at its ReLU, ``pool1`` is a block of its own) and
``fc_block``. ``fc_block`` is returned as ``[B, 1, 1, 4096]`` so that every
feature is an ``(H, W, C)`` map, as the rest of the package expects
(k-NN, feature extraction and the heads pool or flatten it unchanged).

``model.width`` scales every channel count and the fc width (tests and CPU
demos); the fc layer's input is sized for the spec's image size, so any
image of at least :data:`MIN_IMAGE_SIZE` pixels works (224 gives the
official 6x6x256 = 9216 inputs).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rotnet_jax.errors import ConfigError
from rotnet_jax.models import layers
from rotnet_jax.models.backbone import Backbone
from rotnet_jax.models.backbone import KernelInitFactory
from rotnet_jax.models.layers import BATCH_NORM_EPSILON
from rotnet_jax.models.layers import BATCH_NORM_MOMENTUM
from rotnet_jax.models.layers import torch_default_bias_init
from rotnet_jax.models.layers import torch_default_kernel_init
from rotnet_jax.models.nin import scaled_channels

# (name, out_channels, kernel, stride, padding, max-pool after) of each
# convolution, before `width` scaling.
CONV_LAYERS = (
    ('conv1', 64, 11, 4, 2, True),
    ('conv2', 192, 5, 1, 2, True),
    ('conv3', 384, 3, 1, 1, False),
    ('conv4', 256, 3, 1, 1, False),
    ('conv5', 256, 3, 1, 1, True),
)
FC_WIDTH = 4096
BLOCK_NAMES = tuple(name for name, *_ in CONV_LAYERS) + ('fc_block',)
NUM_CONV_BLOCKS = len(CONV_LAYERS)
# The official linear probes' adaptive max-pool side per block (config
# ImageNet_LinearClassifiers_ImageNet_RotNet_AlexNet_Features.py): about
# 9,200 features each (64*12^2, 192*7^2, 384*5^2, 256*6^2). fc_block is
# 1x1 already.
LINEAR_POOL_SIZES = {'conv1': 12, 'conv2': 7, 'conv3': 5, 'conv4': 6,
                     'conv5': 6, 'fc_block': 1}


def _conv_side(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


def _pool_side(size: int) -> int:
  # MaxPool2d(3, stride=2), no padding, floor: PyTorch's default.
  return (size - 3) // 2 + 1


def feature_sides(image_size: int) -> dict[str, int]:
  """Side of every block's feature map (and ``pool5``) for `image_size`.

  A side below 1 means the image is too small for the network.
  """
  sides, size = {}, image_size
  for name, _, kernel, stride, padding, pool in CONV_LAYERS:
    size = _conv_side(size, kernel, stride, padding)
    sides[name] = size
    if pool:
      size = _pool_side(size) if size >= 3 else 0
  sides['pool5'] = size
  return sides


def _min_image_size() -> int:
  size = 1
  while feature_sides(size)['pool5'] < 1:
    size += 1
  return size


# The smallest image every layer accepts (pool5 then is 1x1): 63 pixels.
MIN_IMAGE_SIZE = _min_image_size()


def check_image_size(image_size: int) -> None:
  """Raises ConfigError if `image_size` is below :data:`MIN_IMAGE_SIZE`."""
  if image_size < MIN_IMAGE_SIZE:
    sides = feature_sides(image_size)
    raise ConfigError(
        f'config.image_size={image_size}: too small for AlexNet, which needs '
        f'images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels (its '
        f'conv5 map is {max(sides["conv5"], 0)} pixels wide here, and pool5, '
        'a 3x3 max-pool, needs 3); the official size is 224')


def _channels(width: float) -> dict[str, int]:
  return {name: scaled_channels(c, width) for name, c, *_ in CONV_LAYERS}


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch ``MaxPool2d(kernel_size=3, stride=2)`` (no padding, floor)."""
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


def _batch_norm(features: int, *, dtype, rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=BATCH_NORM_MOMENTUM,
                       epsilon=BATCH_NORM_EPSILON, dtype=dtype,
                       param_dtype=jnp.float32, rngs=rngs)


class ConvBNReLU(nnx.Module):
  """Conv (with bias, explicit padding and stride) -> BatchNorm -> ReLU.

  The bias before BatchNorm changes nothing the network computes (the
  BatchNorm removes it) but is a weight of the official files.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
               *, stride: int = 1, padding: int = 0, dtype=None,
               kernel_init=torch_default_kernel_init, rngs: nnx.Rngs):
    fan_in = in_channels * kernel_size * kernel_size
    self.conv = layers.conv(
        in_channels, out_channels, kernel_size, stride=stride,
        padding=((padding, padding),) * 2, use_bias=True,
        kernel_init=kernel_init, bias_init=torch_default_bias_init(fan_in),
        dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.norm = _batch_norm(out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return nnx.relu(self.norm(self.conv(x), use_running_average=not train))


class FCBlock(nnx.Module):
  """Linear (no bias), BN, ReLU, Linear (no bias), BN, ReLU on [B, F]."""

  def __init__(self, in_features: int, width: int, *, dtype=None,
               kernel_init=torch_default_kernel_init, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(in_features, width, use_bias=False,
                              kernel_init=kernel_init, dtype=dtype,
                              param_dtype=jnp.float32, rngs=rngs)
    self.norm1 = _batch_norm(width, dtype=dtype, rngs=rngs)
    self.linear2 = nnx.Linear(width, width, use_bias=False,
                              kernel_init=kernel_init, dtype=dtype,
                              param_dtype=jnp.float32, rngs=rngs)
    self.norm2 = _batch_norm(width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nnx.relu(self.norm1(self.linear1(x), use_running_average=not train))
    return nnx.relu(self.norm2(self.linear2(x),
                               use_running_average=not train))


def flatten_pool5(x: jax.Array) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, H * W * C]`` (row-major over H, W, C).

  The official code flattens NCHW channel-major; importing its weights
  permutes the first fc layer's inputs instead (``torch_format``).
  """
  return x.reshape((x.shape[0], -1))


class AlexNet(nnx.Module):
  """The RotNet AlexNet: five conv blocks, the fc block and a classifier.

  Attributes:
    block_names: ``('conv1', ..., 'conv5', 'fc_block')``.
  """

  def __init__(self, num_classes: int, *, image_size: int = 224,
               width: float = 1.0, in_channels: int = 3, dtype=None,
               rngs: nnx.Rngs):
    if width <= 0:
      raise ValueError(f'model width must be positive, got width={width}')
    if image_size < MIN_IMAGE_SIZE:
      raise ValueError(f'AlexNet needs images of at least {MIN_IMAGE_SIZE} '
                       f'pixels, got image_size={image_size}')
    channels = _channels(width)
    previous = in_channels
    for name, _, kernel, stride, padding, _ in CONV_LAYERS:
      setattr(self, name, ConvBNReLU(previous, channels[name], kernel,
                                     stride=stride, padding=padding,
                                     dtype=dtype, rngs=rngs))
      previous = channels[name]
    side = feature_sides(image_size)['pool5']
    fc_width = scaled_channels(FC_WIDTH, width)
    self.fc_block = FCBlock(side * side * previous, fc_width, dtype=dtype,
                            rngs=rngs)
    self.classifier = nnx.Linear(
        fc_width, num_classes, kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(fc_width), dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)
    self.block_names = BLOCK_NAMES

  def __call__(self, x: jax.Array, *, train: bool, up_to: str | None = None
               ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Runs the network.

    Args:
      x: normalised images ``[B, H, W, 3]``.
      train: batch statistics (and their running-average update) if True,
        running averages if False.
      up_to: stop after this block: later layers and the classifier are
        not run and the logits are None.

    Returns:
      ``(logits, features)``: float32 logits ``[B, num_classes]`` and the
      features of every block run (``fc_block`` as ``[B, 1, 1, F]``).
    """
    if up_to is not None and up_to not in self.block_names:
      raise ValueError(f'up_to={up_to!r}; valid: {self.block_names}')
    features = {}
    for name, *_, pool in CONV_LAYERS:
      x = getattr(self, name)(x, train=train)
      features[name] = x
      if name == up_to:
        return None, features
      if pool:
        x = max_pool_3x3_s2(x)
    x = self.fc_block(flatten_pool5(x), train=train)
    features['fc_block'] = x[:, None, None, :]
    if up_to == 'fc_block':
      return None, features
    return self.classifier(x).astype(jnp.float32), features


class AlexNetBackbone(Backbone):
  """The registry entry of AlexNet (``config.model.name='alexnet'``).

  Spec: ``{'name': 'alexnet', 'num_classes', 'num_blocks': 5, 'width',
  'image_size'}``. ``num_blocks`` is always 5 (conv1..conv5): it is kept in
  the spec because evaluation configs read every shape key back from the
  weights, and ``config.model.num_blocks`` must say 5 (anything else is a
  ConfigError rather than silently ignored).
  """

  name = 'alexnet'
  default_image_size = 224  # The ImageNet crop the paper trains it on.

  def spec(self, model_config, *, image_size: int,
           num_classes: int) -> dict[str, Any]:
    check_image_size(image_size)
    return {'name': self.name, 'num_classes': num_classes,
            'num_blocks': NUM_CONV_BLOCKS, 'width': model_config.width,
            'image_size': image_size}

  def check_config(self, model_config) -> None:
    if model_config.num_blocks != NUM_CONV_BLOCKS:
      raise ConfigError(
          f'config.model.num_blocks={model_config.num_blocks}: AlexNet has '
          f'exactly {NUM_CONV_BLOCKS} convolutional blocks (conv1..conv5), '
          f'its depth cannot change: set --config.model.num_blocks='
          f'{NUM_CONV_BLOCKS}')

  def block_names(self, spec: dict[str, Any]) -> tuple[str, ...]:
    return BLOCK_NAMES

  def build(self, spec: dict[str, Any], *, dtype, rngs: nnx.Rngs) -> AlexNet:
    return AlexNet(spec['num_classes'], image_size=spec['image_size'],
                   width=spec['width'], dtype=dtype, rngs=rngs)

  def head_block(self, spec: dict[str, Any], in_channels: int, *,
                 kernel_init: KernelInitFactory, dtype,
                 rngs: nnx.Rngs) -> tuple[ConvBNReLU, int]:
    """A layer like conv5: 3x3 conv (pad 1, bias) of 256 x width, BN, ReLU.

    It is the ``ConvB5`` layer the official ``Alexnet_conv4`` classifier
    puts on conv4; the ``conv_block`` head pools it globally.
    """
    channels = _channels(spec['width'])['conv5']
    return ConvBNReLU(in_channels, channels, 3, padding=1, dtype=dtype,
                      kernel_init=kernel_init(3, channels),
                      rngs=rngs), channels

  def linear_pool_sizes(self, spec: dict[str, Any]) -> dict[str, int]:
    """The official probes' sides (12, 7, 5, 6, 6; fc_block 1), each at
    most its block's side (smaller images than 224)."""
    sides = feature_sides(spec['image_size'])
    sides['fc_block'] = 1
    return {b: min(size, sides[b]) for b, size in LINEAR_POOL_SIZES.items()}
