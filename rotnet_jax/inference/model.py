"""Trained networks as plain functions of uint8 images: ``rotnet_jax.load``.

    import rotnet_jax
    model = rotnet_jax.load('/tmp/rotnet_cifar')   # or nin4.safetensors,
                                                   # or an official .pth
    feats = model.features(images, blocks=('conv2',))['conv2']  # NHWC
    angles = [model.rotations[k] for k in model.predict_rotation(images)]

Images are ``uint8 [N, H, W, 3]`` RGB with ``H = W = spec['image_size']``;
the model normalises them with the statistics its weights were trained
with, runs the network in inference mode (BatchNorm running averages) in
batches sharded over this process's devices, and returns numpy arrays.
Where the weights come from is ``rotnet_jax.weights.read``'s business.
"""

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax import weights as weights_lib
from rotnet_jax.data import transforms
from rotnet_jax.errors import InputError
from rotnet_jax.weights import export

DEFAULT_BATCH_SIZE = 256
# What features(pool=...) does to each block's [N, h, w, C] map: nothing,
# a global average ([N, C]), or the linear-SVM benchmark's average pooling
# to about SVM_FEATURES values ([N, s, s, C], see svm_pool_sides).
POOLS = ('none', 'global', 'svm')
# Goyal et al. pool AlexNet's blocks to 9,216-9,600 values each (VISSL's
# eval_alexnet_8gpu_transfer_voc07_svm.yaml: AvgPool2d 19/4, 12/3, 9/1,
# 9/1, 8/1 on 96-, 256-, 384-, 384-, 256-channel maps).
SVM_FEATURES = 9216


def pool_mode(pool) -> str:
  """`pool` as one of :data:`POOLS`; the boolean spelling of older code
  (``pool=True``: global average; False or None: none) is accepted.

  Raises:
    InputError: anything else.
  """
  if pool is None or pool is False:
    return 'none'
  if pool is True:
    return 'global'
  if isinstance(pool, str) and pool in POOLS:
    return pool
  raise InputError(f'pool={pool!r}: expected one of {", ".join(POOLS)}')


def svm_pool_sides(spec: dict[str, Any]) -> dict[str, int]:
  """The side ``s`` each block is average-pooled to by ``pool='svm'``.

  ``s = round(sqrt(SVM_FEATURES / C))`` for a block of ``C`` channels, at
  most the map's side, so that ``s * s * C`` is about 9,216 as in Goyal
  et al.'s AlexNet: our AlexNet (64, 192, 384, 256, 256 channels at 224)
  gets 12, 7, 5, 6, 6 (9,216, 9,408, 9,600, 9,216, 9,216 values; its
  ImageNet probes' sides, ``alexnet.LINEAR_POOL_SIZES``) and ``fc_block``
  1; the CIFAR NIN (96, then 192 channels) 10 and 7 (9,600 and 9,408).
  """
  sides = {}
  for block, (height, width, channels) in models.feature_shapes(
      spec).items():
    side = max(1, round(math.sqrt(SVM_FEATURES / channels)))
    sides[block] = min(side, height, width)
  return sides


class Model:
  """A backbone (and maybe heads) ready to run on uint8 images.

  Attributes:
    spec: the backbone's spec (``models.backbone_spec``).
    block_names: the blocks whose features :meth:`features` returns.
    mean_rgb, std_rgb: the input normalisation (0..255 scale).
    rotations: the angles (degrees) the backbone's classifier predicts, in
      label order, when known (a pretext run, an official file); None for
      a supervised or random backbone.
    heads: the classifier heads (``weights.Heads``) or None.
    weights: the host copy the model was built from.
    mesh: the 1-D ``data`` mesh of the devices it runs on.
  """

  def __init__(self, weights: weights_lib.Weights, *,
               rotations: Sequence[float] | None = None,
               devices: Sequence[Any] | None = None,
               dtype=jnp.float32):
    """Places `weights` on `devices` (default: ``jax.local_devices()``).

    Args:
      weights: the backbone (and heads) to run.
      rotations: see the attribute.
      devices: the devices to shard batches over; one process's own
        devices, so that every process can run a model by itself.
      dtype: the compute dtype (``jnp.bfloat16`` for half precision);
        parameters stay float32 and outputs are float32.
    """
    self.weights = weights
    self.spec = weights.spec
    self.block_names = models.block_names(self.spec)
    self.mean_rgb = tuple(weights.mean_rgb)
    self.std_rgb = tuple(weights.std_rgb)
    self.rotations = None if rotations is None else tuple(rotations)
    self.heads = weights.heads
    self.mesh = Mesh(np.asarray(list(devices or jax.local_devices())),
                     (parallel.DATA_AXIS,))
    self._dtype = dtype
    self._image_size = self.spec['image_size']
    self._graphdef = models.backbone_graphdef(self.spec, dtype)
    self._variables = parallel.replicate(self.mesh, {
        'backbone': weights.variables,
        'heads': weights.heads.variables if weights.heads else {}})
    self._head_graphdefs = self._make_head_graphdefs() if self.heads else {}
    self._programs = {}

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def __repr__(self):
    return (f'Model({self.spec}, heads={self.heads and self.heads.head_type}'
            f', rotations={self.rotations}, devices={self.num_devices})')

  # The public functions of images.

  def logits(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE
             ) -> np.ndarray:
    """The backbone's own classifier: ``float32 [N, spec['num_classes']]``.

    For a RotNet these are rotation logits (label ``k`` is
    ``rotations[k]``); for a supervised backbone, class logits.
    """
    return self._run(images, ('logits',), (), 'none', batch_size)['logits']

  def features(self, images, blocks: Sequence[str] = ('conv2',), *,
               pool: bool | str = False,
               batch_size: int = DEFAULT_BATCH_SIZE
               ) -> dict[str, np.ndarray]:
    """The outputs of `blocks`: ``{block: float32 [N, h, w, C]}`` (NHWC).

    Args:
      images: ``uint8 [N, H, W, 3]``.
      blocks: names from :attr:`block_names`; the network runs up to the
        deepest one.
      pool: ``'none'`` (or False); ``'global'`` (or True): global average
        pooling, ``[N, C]`` per block; ``'svm'``: average pooling to the
        sides of :func:`svm_pool_sides`, ``[N, s, s, C]`` per block.
      batch_size: images per device program (split over the devices).

    Raises:
      InputError: bad images, blocks, pool or batch size.
    """
    blocks = self.check_blocks(blocks)
    return self._run(images, blocks, (), pool_mode(pool), batch_size)

  def predict_rotation(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE
                       ) -> np.ndarray:
    """The most likely rotation of each image, ``int [N]``, an index into
    :attr:`rotations` (e.g. 1 means ``rotations[1]`` = 90 degrees,
    counter-clockwise).

    Raises:
      InputError: the backbone's classifier does not predict rotations (a
        supervised or random network).
    """
    if self.rotations is None:
      raise InputError(
          f'predict_rotation: the weights {self.weights.origin} do not say '
          'that their classifier predicts rotations (no pretext run '
          'config.json, or a supervised network); use logits() instead')
    return np.argmax(self.logits(images, batch_size=batch_size), axis=-1)

  def classify(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE
               ) -> dict[str, np.ndarray]:
    """Class logits of every head: ``{block: float32 [N, num_classes]}``.

    Raises:
      InputError: the weights have no heads (load an evaluation run).
    """
    if self.heads is None:
      raise InputError(
          'classify: these weights have no classifier heads; load the '
          "workdir of an evaluation run (mode='evaluate') or its export")
    return self._run(images, (), self.heads.blocks, 'none', batch_size)

  # How they run.

  def check_images(self, images) -> np.ndarray:
    """`images` as a numpy array, if they are what the network takes.

    Raises:
      InputError: not ``uint8 [N, H, W, 3]`` with ``H = W =
        spec['image_size']``, or no images.
    """
    size = self._image_size
    expected = f'uint8 images [N, {size}, {size}, 3] (RGB, 0..255, NHWC)'
    if not hasattr(images, 'dtype') or not hasattr(images, 'shape'):
      raise InputError(f'expected {expected}, got a {type(images).__name__}')
    if images.dtype != np.uint8:
      raise InputError(f'expected {expected}, got dtype {images.dtype} (for '
                       'floats in 0..1, pass (x * 255).round().astype('
                       "'uint8'); the model normalises them itself)")
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1:3] != (size, size):
      hint = (' (channels first? use images.transpose(0, 2, 3, 1))'
              if len(shape) == 4 and shape[1] == 3 else '')
      raise InputError(f'expected {expected}, got shape {shape}{hint}')
    if shape[0] == 0:
      raise InputError(f'expected {expected}, got no images (N = 0)')
    return np.asarray(images)

  def check_blocks(self, blocks) -> tuple[str, ...]:
    """`blocks` (a name or names) as a tuple, if the network has them.

    Raises:
      InputError: an unknown block, or none.
    """
    if isinstance(blocks, str):
      blocks = (blocks,)
    blocks = tuple(blocks)
    unknown = [b for b in blocks if b not in self.block_names]
    if unknown or not blocks:
      raise InputError(f'blocks={blocks}: expected some of '
                       f'{list(self.block_names)}')
    return blocks

  def _make_head_graphdefs(self):
    shapes = models.feature_shapes(self.spec)
    graphdefs = {}
    for block in self.heads.blocks:
      pool_size = 6
      if self.heads.head_type == 'linear':
        # The pool side is not in the weights' description; the linear
        # layer's input, side * side * channels, gives it back.
        kernel = self.heads.variables['params'][block]['output']['kernel']
        fan_in = kernel.shape[0]
        pool_size = math.isqrt(fan_in // shapes[block][-1])
      options = models.head_options(self.spec, linear_pool_size=pool_size)
      graphdefs[block] = nnx.graphdef(nnx.eval_shape(
          lambda b=block, o=options: models.heads.make_head(
              self.heads.head_type, shapes[b], self.heads.num_classes, o,
              block=b, dtype=self._dtype, rngs=nnx.Rngs(0))))
    return graphdefs

  def _program(self, outputs: tuple[str, ...], heads: tuple[str, ...],
               pool: str):
    """The jitted ``(variables, uint8 batch) -> {name: float32}``."""
    key = (outputs, heads, pool)
    if key not in self._programs:
      self._programs[key] = self._compile(outputs, heads, pool)
    return self._programs[key]

  def _compile(self, outputs, heads, pool):
    order = self.block_names
    sides = svm_pool_sides(self.spec) if pool == 'svm' else {}
    wanted = [b for b in outputs if b != 'logits'] + list(heads)
    up_to = (None if 'logits' in outputs or not wanted
             else max(wanted, key=order.index))

    def run(variables, images):
      x = transforms.normalize(images, self.mean_rgb, self.std_rgb,
                               self._dtype)
      backbone = nnx.merge(self._graphdef,
                           variables['backbone']['params'],
                           variables['backbone']['batch_stats'])
      logits, features = backbone(x, train=False, up_to=up_to)
      result = {}
      for name in outputs:
        value = logits if name == 'logits' else features[name]
        if pool == 'global' and name != 'logits':
          value = jnp.mean(value, axis=(1, 2))
        elif pool == 'svm' and name != 'logits':
          value = models.heads.adaptive_average_pool(value, sides[name])
        result[name] = value.astype(jnp.float32)
      for block in heads:
        head = nnx.merge(self._head_graphdefs[block],
                         variables['heads']['params'][block],
                         variables['heads']['batch_stats'][block])
        result[block] = head(features[block], train=False).astype(
            jnp.float32)
      return result

    batch = parallel.batch_sharding(self.mesh)
    return jax.jit(run, in_shardings=(parallel.replicated(self.mesh), batch),
                   out_shardings=batch)

  def _run(self, images, outputs, heads, pool, batch_size):
    images = self.check_images(images)
    if not isinstance(batch_size, int) or batch_size < 1:
      raise InputError(f'batch_size={batch_size!r}: expected a positive '
                       'integer')
    program = self._program(tuple(outputs), tuple(heads), pool)
    devices = self.num_devices
    sharding = parallel.batch_sharding(self.mesh)
    chunks = []
    for start in range(0, len(images), batch_size):
      batch = images[start:start + batch_size]
      count = len(batch)
      # Every device gets an equal share: pad with copies of the last
      # image, whose outputs are dropped again below.
      padded = -(-count // devices) * devices
      if padded != count:
        batch = np.concatenate(
            [batch, np.repeat(batch[-1:], padded - count, axis=0)])
      result = program(self._variables, jax.device_put(batch, sharding))
      chunks.append({k: np.asarray(v)[:count] for k, v in result.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def load(path: str, step: int = 0, *, devices=None, dtype=jnp.float32
         ) -> Model:
  """The network at `path`, ready to run (see :class:`Model`).

  Args:
    path: a run's workdir (its latest checkpoint, or `step`), a file
      written by ``python -m rotnet_jax.export``, or an official
      FeatureLearningRotNet PyTorch file.
    step: a workdir's checkpoint step (0: the latest).
    devices: devices to run on (default: this process's).
    dtype: compute dtype.

  Raises:
    MissingInputError: nothing at `path`, no checkpoint or no such step.
    InputError: `path` holds something else (naming what was expected).
  """
  weights = weights_lib.read(path, step)
  return Model(weights, rotations=export.rotations_at(path, weights),
               devices=devices, dtype=dtype)
