"""The networks of the PASCAL VOC transfer: a pretrained AlexNet, re-headed.

The paper (Table 7) fine-tunes its AlexNet RotNet on PASCAL VOC with the
protocols of the papers it compares with:

* :class:`AlexNetClassifier` (VOC2007 classification, Krähenbühl et al.'s
  protocol): the whole AlexNet with a new last layer of 20 outputs, one
  sigmoid per class, drawn from N(0, 0.01) with zero bias;
* :class:`AlexNetFCN32s` (VOC2012 segmentation, Long et al.'s FCN-32s):
  the fully connected layers applied as convolutions (fc6 a 6x6
  convolution whose kernel *is* the fc6 matrix, fc7 and the new score
  layer 1x1), the scores upsampled bilinearly, 32x, to the input's size.

Both keep the pretrained AlexNet under ``alexnet`` (the registry's
``AlexNet``, so its variables are the pretext run's, key for key) and can
freeze its first blocks (``frozen_up_to``: the paper's "fc6-8" setting
freezes conv1..conv5): those blocks run in inference mode, and nothing
flows back through them.

FCN-32s differences from Long et al., kept because the RotNet backbone
asks for them: the pretrained AlexNet has BatchNorm after fc6 and fc7
(applied per position, as a 1x1 BatchNorm); fc6 is padded 'SAME' on the
pool5 map instead of padding the input image by 100 pixels and cropping
the upsampled scores (same receptive fields, the same 1/32 scale, no
crop offsets), and the upsampling is ``jax.image.resize`` (bilinear,
fixed, as FCN-32s keeps its 32x deconvolution fixed to bilinear).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rotnet_jax.errors import ConfigError
from rotnet_jax.models import alexnet

# The outputs of each task: VOC's 20 object classes (one sigmoid each);
# VOC's 20 classes and the background (one softmax per pixel).
NUM_VOC_CLASSES = 20
NUM_SEGMENTATION_CLASSES = 21
# The blocks that can be frozen, in order.
CONV_BLOCKS = tuple(name for name, *_ in alexnet.CONV_LAYERS)


def conv_blocks(model: alexnet.AlexNet, x: jax.Array, *, train: bool,
                frozen_up_to: str = '') -> jax.Array:
  """AlexNet's conv1..conv5 and pool5 on `x`, the first blocks frozen.

  Args:
    model: the AlexNet.
    x: normalised images ``[B, H, W, 3]``.
    train: whether the trained blocks use (and update) batch statistics.
    frozen_up_to: the last frozen block ('' for none): blocks up to it run
      in inference mode, and the gradient stops after it.

  Returns:
    The pool5 map ``[B, h, w, C]``.
  """
  frozen = frozen_blocks(frozen_up_to)
  for name, *_, pool in alexnet.CONV_LAYERS:
    x = getattr(model, name)(x, train=train and name not in frozen)
    if name == frozen_up_to:
      x = jax.lax.stop_gradient(x)
    if pool:
      x = alexnet.max_pool_3x3_s2(x)
  return x


def frozen_blocks(frozen_up_to: str) -> tuple[str, ...]:
  """The blocks ``frozen_up_to`` freezes: conv1 up to it ('' for none)."""
  if not frozen_up_to:
    return ()
  if frozen_up_to not in CONV_BLOCKS:
    raise ConfigError(f'frozen_up_to={frozen_up_to!r}: must be one of '
                      f"{list(CONV_BLOCKS)} or ''")
  return CONV_BLOCKS[:CONV_BLOCKS.index(frozen_up_to) + 1]


def _new_layer_init(stddev: float):
  return nnx.initializers.normal(stddev) if stddev else nnx.initializers.zeros


class AlexNetClassifier(nnx.Module):
  """AlexNet with a new last layer: VOC2007 multi-label classification.

  Attributes:
    alexnet: the network, its ``classifier`` the new fc8 (``num_classes``
      outputs, N(0, 0.01) weights and zero biases, as Krähenbühl et al.'s
      ``train_cls.py`` draws it).
  """

  def __init__(self, spec: dict[str, Any], num_classes: int, *, dtype=None,
               rngs: nnx.Rngs):
    self.alexnet = alexnet.AlexNet(num_classes, image_size=spec['image_size'],
                                   width=spec['width'], dtype=dtype,
                                   rngs=rngs)
    fc_width = self.alexnet.classifier.in_features
    self.alexnet.classifier = nnx.Linear(
        fc_width, num_classes, kernel_init=_new_layer_init(0.01),
        bias_init=nnx.initializers.zeros, dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool,
               frozen_up_to: str = '') -> jax.Array:
    """float32 logits ``[B, num_classes]`` of normalised images `x`."""
    model = self.alexnet
    x = conv_blocks(model, x, train=train, frozen_up_to=frozen_up_to)
    x = model.fc_block(alexnet.flatten_pool5(x), train=train)
    return model.classifier(x).astype(jnp.float32)


class AlexNetFCN32s(nnx.Module):
  """AlexNet as a fully convolutional network: FCN-32s segmentation.

  Attributes:
    alexnet: the network (its classifier is not used).
    score: the new 1x1 score layer, zero-initialised as FCN's.
  """

  def __init__(self, spec: dict[str, Any], num_classes: int, *, dtype=None,
               rngs: nnx.Rngs):
    self.alexnet = alexnet.AlexNet(1, image_size=spec['image_size'],
                                   width=spec['width'], dtype=dtype,
                                   rngs=rngs)
    # The pretext classifier has no use here: no parameter that trains for
    # nothing (and weight decay would still change it).
    del self.alexnet.classifier
    self._side = alexnet.feature_sides(spec['image_size'])['pool5']
    fc_width = self.alexnet.fc_block.linear2.out_features
    self.score = nnx.Linear(fc_width, num_classes,
                            kernel_init=_new_layer_init(0.0),
                            bias_init=nnx.initializers.zeros, dtype=dtype,
                            param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool,
               frozen_up_to: str = '') -> jax.Array:
    """float32 per-pixel logits ``[B, H, W, num_classes]`` of `x`."""
    height, width = x.shape[1:3]
    model = self.alexnet
    x = conv_blocks(model, x, train=train, frozen_up_to=frozen_up_to)
    fc = model.fc_block
    # fc6 as a convolution: its [side * side * C, F] matrix reads the pool5
    # window row-major over (h, w, c), which is exactly an HWIO kernel.
    kernel = fc.linear1.kernel[...].reshape(
        self._side, self._side, x.shape[-1], -1)
    x = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = nnx.relu(fc.norm1(x, use_running_average=not train))
    x = nnx.relu(fc.norm2(fc.linear2(x), use_running_average=not train))
    scores = self.score(x).astype(jnp.float32)
    return jax.image.resize(
        scores, (scores.shape[0], height, width, scores.shape[-1]),
        method='bilinear')
