"""What a run trains: one objective per ``config.mode``.

An objective owns its network and says

* how to initialise the trained variables (from scratch, or around a
  restored backbone): :meth:`Objective.init`;
* the forward pass on a normalised batch, giving per-head logits with the
  labels and per-sample weights they are scored against:
  :meth:`Objective.apply`;
* what it is, as JSON, for checkpoint metadata, resume checks and
  ``results.json``: :attr:`Objective.network`, :meth:`Objective.describe`.

The implementations:

* :class:`RotationPretext` (``mode='pretext'``): the RotNet task, the whole
  network predicts which rotation each image got;
* :class:`SupervisedClasses` (``mode='supervised'``): the whole network
  predicts the dataset's classes;
* :class:`HeadsOnBackbone` (``mode='evaluate'``): classifier heads on the
  blocks of a restored (or random) backbone, frozen or fine-tuned;
* :class:`VOCTransfer` (``mode='transfer'``): the restored AlexNet
  re-headed and fine-tuned on PASCAL VOC classification or segmentation;
  :class:`VOCDetection` (``transfer_task='voc_detection'``) as a Fast
  R-CNN detector.

The train and eval steps in ``rotnet_jax/steps.py`` work for any of them.
"""

import abc
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from rotnet_jax import boxes as boxes_lib
from rotnet_jax import models
from rotnet_jax.data import rotation
from rotnet_jax.data import voc
from rotnet_jax.models import detection
from rotnet_jax.models import transfer
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import voc_metrics
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
    extras: what else an objective's loss and metrics read (detection:
      box deltas, regions and their targets), or None.
  """
  logits: dict[str, jax.Array]
  labels: jax.Array
  weights: jax.Array
  batch_stats: Any
  extras: Any = None


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

  def losses(self, output: Output) -> dict[str, jax.Array]:
    """``{head: float32 [N]}``, each sample's loss (weighted by the steps).

    Softmax cross-entropy on integer class labels; objectives scored on
    other targets (several labels per image, a label per pixel) override
    it.
    """
    return {head: optax.softmax_cross_entropy_with_integer_labels(
        logits, output.labels) for head, logits in output.logits.items()}

  def metric_sums(self, output: Output, losses: dict[str, jax.Array], *,
                  train: bool) -> dict[str, dict[str, jax.Array]]:
    """``{head: sums}`` of one batch, added up on the host by
    ``metrics.summarize``: the weighted loss, the weight total and the
    correct predictions (accuracy)."""
    del train
    return {head: metrics_lib.weighted_sums(logits, output.labels,
                                            losses[head], output.weights)
            for head, logits in output.logits.items()}


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


class VOCTransfer(Objective):
  """A pretrained AlexNet fine-tuned on PASCAL VOC (``mode='transfer'``).

  ``config.transfer_task`` says which:

  * ``'voc_classification'``: 20 sigmoid outputs (``AlexNetClassifier``),
    each image's loss the sum over classes of the binary cross-entropy,
    classes ignored for the image (target 0: only ``difficult`` objects of
    the class) left out; tested on ``config.test_crops`` random crops per
    image whose scores are averaged (Krähenbühl et al. sum them: the same
    ranking, so the same average precision), scored by mean average
    precision over the whole test split (``metrics.summarize``).
  * ``'voc_segmentation'``: 21-way per-pixel softmax (``AlexNetFCN32s``),
    each image's loss the mean over its scored pixels (label 255 is not
    scored), tested by mean IoU over the split's confusion matrix.

  The restored backbone is a constant of the steps: the blocks up to
  ``config.frozen_up_to`` are read from it at every step (they never
  train), and the trained variables start as its other blocks.

  Attributes:
    head: the one head's name, ``config.transfer_task``.
    frozen: the frozen blocks, in order.
  """

  def __init__(self, config, backbone: restore.RestoredBackbone):
    spec = backbone.spec
    self.head = config.transfer_task
    self._classification = self.head == 'voc_classification'
    network_class, num_classes = self._network()
    self.frozen_up_to = config.frozen_up_to
    self.frozen = transfer.frozen_blocks(self.frozen_up_to)
    self.constants = backbone.variables
    self._param_dtype = models.param_dtype(config.float64)
    dtype = models.compute_dtype(config.half_precision, config.float64)
    self._make = lambda rngs: network_class(spec, num_classes, dtype=dtype,
                                            rngs=rngs)
    self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: self._make(
        nnx.Rngs(0))))
    self._describe = {'transfer_task': self.head,
                      'frozen_up_to': self.frozen_up_to,
                      'dataset': config.dataset, **backbone.origin}
    self.network = {'backbone': spec, 'transfer_task': self.head,
                    'frozen_up_to': self.frozen_up_to,
                    'num_classes': num_classes, **backbone.origin}

  def _network(self):
    """``(network class, outputs)`` of the task."""
    if self._classification:
      return transfer.AlexNetClassifier, transfer.NUM_VOC_CLASSES
    return transfer.AlexNetFCN32s, transfer.NUM_SEGMENTATION_CLASSES

  def init(self, seed, constants):
    variables = models.variables(self._make(nnx.Rngs(seed)))
    trained = {}
    for kind in ('params', 'batch_stats'):
      tree = dict(variables[kind])
      network = dict(tree['alexnet'])
      for block in list(network):
        if block in self.frozen:
          del network[block]  # Read from the constants at every step.
        elif block != 'classifier':  # The classifier is new.
          network[block] = constants[kind][block]
      tree['alexnet'] = network
      trained[kind] = models.cast_variables(tree, self._param_dtype)
    return trained['params'], trained['batch_stats']

  def _with_frozen(self, trained, frozen):
    network = dict(trained['alexnet'])
    network.update({block: frozen[block] for block in self.frozen})
    return dict(trained, alexnet=network)

  def apply(self, params, batch_stats, constants, batch, step, *, train):
    del step  # No per-step randomness: the source draws the crops.
    model = nnx.merge(self.graphdef,
                      self._with_frozen(params, constants['params']),
                      self._with_frozen(batch_stats,
                                        constants['batch_stats']))
    images = batch['image']
    crops = images.shape[1] if images.ndim == 5 else 0
    if crops:  # [B, crops, S, S, 3]: every crop through the network.
      images = images.reshape((-1,) + images.shape[2:])
    logits = model(images, train=train, frozen_up_to=self.frozen_up_to)
    if crops:
      logits = logits.reshape((-1, crops) + logits.shape[1:]).mean(axis=1)
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    stats['alexnet'] = {block: value for block, value in
                        stats['alexnet'].items() if block not in self.frozen}
    return Output({self.head: logits}, batch['label'], batch['mask'], stats)

  def losses(self, output):
    logits, labels = output.logits[self.head], output.labels
    if self._classification:
      scored = (labels != 0).astype(logits.dtype)
      losses = optax.sigmoid_binary_cross_entropy(
          logits, (labels > 0).astype(logits.dtype))
      return {self.head: jnp.sum(losses * scored, axis=-1)}
    scored = labels != voc.IGNORE_LABEL
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(scored, labels, 0).astype(jnp.int32))
    scored = scored.astype(logits.dtype)
    return {self.head: jnp.sum(losses * scored, axis=(1, 2)) /
                       jnp.maximum(jnp.sum(scored, axis=(1, 2)), 1.0)}

  def metric_sums(self, output, losses, *, train):
    logits, labels = output.logits[self.head], output.labels
    weights = output.weights
    sums = {'loss_sum': jnp.sum(losses[self.head] * weights),
            'count': jnp.sum(weights)}
    if self._classification:
      if not train:  # Average precision needs every score of the split.
        sums.update(scores=logits, targets=labels, weights=weights)
    else:
      # Padding images (weight 0) count no pixel.
      labels = jnp.where(weights[:, None, None] > 0, labels,
                         voc.IGNORE_LABEL)
      sums['confusion'] = voc_metrics.confusion_sums(
          logits, labels, logits.shape[-1],
          ignore_label=voc.IGNORE_LABEL)
    return {self.head: sums}

  def describe(self):
    return {self.head: dict(self._describe)}


class VOCDetection(VOCTransfer):
  """A pretrained AlexNet fine-tuned as a Fast R-CNN detector on VOC2007
  (``transfer_task='voc_detection'``, ``models/detection.py``).

  Batches come from ``data/detection_source.DetectionSource``: images with
  their regions of interest, the regions' classes (0 background) and box
  targets. Each image's loss is Fast R-CNN's multi-task loss over its
  regions: the 21-way softmax cross-entropy plus, for foreground regions,
  the smooth L1 loss (Huber, delta 1) of the class's four box deltas,
  both averaged over the image's (non-padding) regions. Evaluation turns
  every test image's regions into detections (``detection.detect``: per
  class the best ``detections_per_class``, suppressed at
  ``nms_threshold``), which ``metrics.summarize`` scores by VOC07 average
  precision against the source's ground truth.
  """

  def __init__(self, config, backbone: restore.RestoredBackbone):
    super().__init__(config, backbone)
    self.detections_per_class = config.detections_per_class
    self.nms_threshold = config.nms_threshold

  def _network(self):
    return detection.AlexNetFastRCNN, detection.NUM_DETECTION_CLASSES

  def apply(self, params, batch_stats, constants, batch, step, *, train):
    del step, train  # BatchNorm is fixed (models/detection.py).
    model = nnx.merge(self.graphdef,
                      self._with_frozen(params, constants['params']),
                      self._with_frozen(batch_stats,
                                        constants['batch_stats']))
    logits, deltas = model(batch['image'], batch['rois'],
                           frozen_up_to=self.frozen_up_to)
    extras = {key: batch[key] for key in ('rois', 'roi_targets',
                                          'roi_weights', 'scale', 'size',
                                          'index') if key in batch}
    return Output({self.head: logits}, batch['roi_labels'], batch['mask'],
                  batch_stats, extras=dict(extras, deltas=deltas))

  def losses(self, output):
    logits, labels = output.logits[self.head], output.labels
    extras = output.extras
    weights = extras['roi_weights']
    classification = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels)
    class_deltas = jnp.take_along_axis(
        extras['deltas'], labels[..., None, None], axis=2)[..., 0, :]
    regression = jnp.sum(optax.huber_loss(
        class_deltas, extras['roi_targets'], delta=1.0), axis=-1)
    foreground = (labels > 0).astype(logits.dtype)
    per_region = weights * (classification + foreground * regression)
    return {self.head: jnp.sum(per_region, axis=1) /
                       jnp.maximum(jnp.sum(weights, axis=1), 1.0)}

  def metric_sums(self, output, losses, *, train):
    weights = output.weights
    sums = {'loss_sum': jnp.sum(losses[self.head] * weights),
            'count': jnp.sum(weights)}
    if not train:  # Average precision needs every detection of the split.
      extras = output.extras
      boxes, scores = detection.detect(
          output.logits[self.head], extras['deltas'], extras['rois'],
          extras['roi_weights'], extras['scale'], extras['size'],
          per_class=self.detections_per_class,
          nms_threshold=self.nms_threshold, box_stds=boxes_lib.BOX_STDS)
      sums.update(detection_boxes=boxes, detection_scores=scores,
                  image_index=extras['index'], weights=weights)
    return {self.head: sums}


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
  elif config.mode == 'transfer':
    transfer_class = (VOCDetection if config.transfer_task == 'voc_detection'
                      else VOCTransfer)
    objective = transfer_class(config, restore.load_backbone(
        config, mesh, train_source))
  else:
    backbone = restore.load_backbone(config, mesh, train_source)
    objective = HeadsOnBackbone(config, num_classes, backbone)
  if class_names:
    objective.network['classes'] = list(class_names)
  return objective
