"""What a run trains: one objective per ``config.mode``.

An objective owns its network and says

* how to initialise the trained variables (from scratch, or around a
  restored backbone): :meth:`Objective.init`;
* the forward pass on a normalised batch, giving per-head logits with the
  labels and per-sample weights they are scored against:
  :meth:`Objective.apply`;
* what it is, as JSON, for checkpoint metadata, resume checks and
  ``results.json``: :attr:`Objective.network`, :meth:`Objective.describe`.

The three implementations:

* :class:`RotationPretext` (``mode='pretext'``): the RotNet task, the whole
  network predicts which rotation each image got;
* :class:`SupervisedClasses` (``mode='supervised'``): the whole network
  predicts the dataset's classes;
* :class:`HeadsOnBackbone` (``mode='evaluate'``): classifier heads on the
  blocks of a restored (or random) backbone, frozen or fine-tuned.

The train and eval steps in ``rotnet_jax/steps.py`` work for any of them.
"""

import abc
from typing import Any

import jax
from flax import nnx
from flax import struct

from rotnet_jax import models
from rotnet_jax.data import rotation
from rotnet_jax.weights import restore

# Folded into the run seed for the random rotations of rotation_mode='random'.
_TASK_STREAM = 0x7461736B


@struct.dataclass
class Output:
  """An objective's forward pass on one batch.

  Attributes:
    logits: ``{head: float32 [N, classes]}``; every head is scored on the
      same labels and weights.
    labels: ``int32 [N]``.
    weights: ``float32 [N]``, 0 for padding samples.
    batch_stats: the new BatchNorm statistics of the trained variables.
  """
  logits: dict[str, jax.Array]
  labels: jax.Array
  weights: jax.Array
  batch_stats: Any


class Objective(abc.ABC):
  """What is trained, and how it scores a batch.

  Attributes:
    network: JSON description of what is trained, saved with every
      checkpoint; a resumed run must describe the same network.
    inputs_per_image: samples one image becomes (4 with every rotation),
      for images/s.
    constants: arrays the steps read but never train (a frozen backbone),
      passed to :meth:`init` and :meth:`apply`.
  """
  network: dict[str, Any]
  inputs_per_image: int = 1
  constants: Any = None

  @abc.abstractmethod
  def init(self, seed: int, constants) -> tuple[Any, Any]:
    """Fresh ``(params, batch_stats)`` of the trained variables; pure."""

  @abc.abstractmethod
  def apply(self, params, batch_stats, constants, batch, step, *,
            train: bool) -> Output:
    """The forward pass on `batch` (normalised images); runs inside jit.

    Args:
      params, batch_stats: the trained variables.
      constants: :attr:`constants`.
      batch: ``{'image': float [B, H, W, 3], 'label', 'mask'}``.
      step: the global step (seeds per-step randomness).
      train: training (BatchNorm on batch statistics, random draws) or
        evaluation.
    """

  @abc.abstractmethod
  def describe(self) -> dict[str, dict[str, Any]]:
    """``{head: fields}`` added to each head's entry of ``results.json``."""


class _WholeNetwork(Objective):
  """The whole backbone trains on one task (its own classifier).

  Attributes:
    spec: the backbone's spec.
    graphdef: the network's static structure (compute dtype included).
  """

  head: str

  def __init__(self, config, num_classes: int):
    self.spec = models.backbone_spec(config.model,
                                     image_size=config.image_size,
                                     num_classes=num_classes)
    self.network = {'backbone': self.spec}
    self._config = config
    dtype = models.compute_dtype(config.half_precision, config.float64)
    self.graphdef = models.backbone_graphdef(self.spec, dtype)

  def init(self, seed, constants):
    del constants
    variables = models.init_variables(
        self.spec, seed, bn_scale_init=self._config.model.bn_scale_init,
        dtype=models.param_dtype(self._config.float64))
    return variables['params'], variables['batch_stats']

  @abc.abstractmethod
  def task(self, batch, step, *, train: bool):
    """``(inputs, labels, weights)`` of the network for `batch`."""

  def apply(self, params, batch_stats, constants, batch, step, *, train):
    del constants
    inputs, labels, weights = self.task(batch, step, train=train)
    model = nnx.merge(self.graphdef, params, batch_stats)
    logits, _ = model(inputs, train=train)
    new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return Output({self.head: logits}, labels, weights, new_stats)

  def describe(self):
    config = self._config
    return {self.head: {'block': None, 'head_type': self.head,
                        'dataset': config.dataset,
                        'pipeline': config.pipeline,
                        'rotations': self._rotations()}}

  def _rotations(self):
    return None


class RotationPretext(_WholeNetwork):
  """The RotNet task: predict the rotation of each image.

  With ``rotation_mode='all'`` every image appears at every angle of
  ``config.rotations`` (label ``k`` for angle ``k``); with ``'random'`` at
  one random angle per step. Evaluation always scores every angle.
  """

  head = 'rotation'

  def __init__(self, config):
    self._angles = tuple(config.rotations)
    self._random = config.rotation_mode == 'random'
    self._seed = config.seed
    super().__init__(config, num_classes=len(self._angles))
    self.inputs_per_image = 1 if self._random else len(self._angles)

  def task(self, batch, step, *, train):
    images = batch['image']
    if train and self._random:
      key = jax.random.fold_in(
          jax.random.fold_in(jax.random.key(self._seed), _TASK_STREAM), step)
      images, labels = rotation.rotate_randomly(images, key, self._angles)
      return images, labels, batch['mask']
    images, labels = rotation.rotate_all(images, self._angles)
    weights = rotation.repeat_per_rotation(batch['mask'], len(self._angles))
    return images, labels, weights

  def _rotations(self):
    return list(self._angles)


class SupervisedClasses(_WholeNetwork):
  """The whole network predicts the dataset's class labels."""

  head = 'classifier'

  def task(self, batch, step, *, train):
    del step, train
    return batch['image'], batch['label'], batch['mask']


class HeadsOnBackbone(Objective):
  """Classifier heads on the blocks of a restored backbone.

  One head of ``config.head`` per block of ``config.blocks`` (every block
  when empty), all fed by one forward pass of the backbone. Frozen
  (default): the backbone runs in inference mode under ``stop_gradient``
  and is a constant of the steps, not a trained variable. With
  ``finetune=True`` it trains together with the (single) head.

  Attributes:
    blocks: the blocks with a head, in order.
    finetune: whether the backbone trains too.
    head_graphdefs: ``{block: static structure of its head}``.
  """

  def __init__(self, config, num_classes: int, backbone: restore.RestoredBackbone):
    spec = backbone.spec
    self.blocks = tuple(config.blocks) or models.block_names(spec)
    self.finetune = config.finetune
    self.constants = backbone.variables
    order = models.block_names(spec)
    # Blocks after the deepest head are not run: no wasted compute, and
    # when fine-tuning their BatchNorm statistics stay as restored.
    self._deepest_block = max(self.blocks, key=order.index)
    self._seed = config.seed
    self._describe = {'head_type': config.head, 'finetune': config.finetune,
                      'dataset': config.dataset, 'pipeline': config.pipeline,
                      **backbone.origin}
    self.network = {'backbone': spec, 'head': config.head,
                    'blocks': list(self.blocks), 'finetune': self.finetune,
                    **backbone.origin, 'num_classes': num_classes}
    dtype = models.compute_dtype(config.half_precision, config.float64)
    self._param_dtype = models.param_dtype(config.float64)
    self._backbone_graphdef = models.backbone_graphdef(spec, dtype)
    feature_shapes = models.feature_shapes(spec)
    options = models.head_options(
        spec, linear_pool_size=config.linear_pool_size)

    def make_heads(rngs):
      return {block: models.heads.make_head(
          config.head, feature_shapes[block], num_classes, options,
          block=block, dtype=dtype, rngs=rngs) for block in self.blocks}

    self._make_heads = make_heads
    self.head_graphdefs = {
        block: nnx.graphdef(head) for block, head in nnx.eval_shape(
            lambda: make_heads(nnx.Rngs(0))).items()}

  def init(self, seed, constants):
    heads = {block: models.variables(head)
             for block, head in self._make_heads(nnx.Rngs(seed)).items()}
    params = {'heads': {b: v['params'] for b, v in heads.items()}}
    batch_stats = {'heads': {b: v['batch_stats'] for b, v in heads.items()}}
    if self.finetune:
      params['backbone'] = constants['params']
      batch_stats['backbone'] = constants['batch_stats']
    # Heads (and a restored backbone) are built in float32; config.float64
    # trains them in float64.
    return (models.cast_variables(params, self._param_dtype),
            models.cast_variables(batch_stats, self._param_dtype))

  def features(self, params, batch_stats, constants, images, *, train):
    """The backbone's features up to the deepest head, and new statistics."""
    if self.finetune:
      backbone = nnx.merge(self._backbone_graphdef, params['backbone'],
                           batch_stats['backbone'])
      _, features = backbone(images, train=train, up_to=self._deepest_block)
      return features, {'backbone': nnx.to_pure_dict(
          nnx.state(backbone, nnx.BatchStat))}
    backbone = nnx.merge(self._backbone_graphdef, constants['params'],
                         constants['batch_stats'])
    _, features = backbone(images, train=False, up_to=self._deepest_block)
    return jax.lax.stop_gradient(features), {}

  def apply(self, params, batch_stats, constants, batch, step, *, train):
    del step  # Heads need no per-step randomness.
    features, new_stats = self.features(params, batch_stats, constants,
                                        batch['image'], train=train)
    logits, head_stats = {}, {}
    for block in self.blocks:
      head = nnx.merge(self.head_graphdefs[block], params['heads'][block],
                       batch_stats['heads'][block])
      logits[block] = head(features[block], train=train)
      head_stats[block] = nnx.to_pure_dict(nnx.state(head, nnx.BatchStat))
    new_stats['heads'] = head_stats
    return Output(logits, batch['label'], batch['mask'], new_stats)

  def describe(self):
    return {block: {'block': block, **self._describe}
            for block in self.blocks}


def from_config(config, num_classes: int, mesh,
                class_names: tuple[str, ...] = (),
                train_source=None) -> Objective:
  """The objective of ``config.mode``.

  Args:
    config: the run config.
    num_classes: classes of the training dataset.
    mesh: where a restored backbone's variables are placed.
    class_names: the training split's names of its labels. Runs that learn
      labels (supervised, evaluate) save them in their ``network``: a
      resumed run whose dataset names its classes otherwise stops.
    train_source: the training batches, for a random backbone whose
      BatchNorm statistics are re-estimated (``random_batch_stats``).

  Raises:
    MissingInputError, InputError: ``mode='evaluate'`` and the pretrained
      backbone cannot be restored (see ``restore.load_backbone``).
  """
  if config.mode == 'pretext':
    return RotationPretext(config)
  if config.mode == 'supervised':
    objective = SupervisedClasses(config, num_classes)
  else:
    backbone = restore.load_backbone(config, mesh, train_source)
    objective = HeadsOnBackbone(config, num_classes, backbone)
  if class_names:
    objective.network['classes'] = list(class_names)
  return objective
