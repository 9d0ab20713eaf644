"""PASCAL VOC2007 detection batches for Fast R-CNN, built on the host.

Fast R-CNN (Girshick, ICCV 2015) trains on minibatches of images, each
with a sample of its regions of interest (RoIs): the object proposals and
the ground-truth boxes, labelled by their overlap with the ground truth.
Per image (:func:`sample_rois`):

* every RoI's class is that of the ground-truth box it overlaps most
  (IoU, :mod:`rotnet_jax.boxes`); a RoI is foreground if that IoU is at
  least 0.5, background if it lies in [0.1, 0.5), and unused below 0.1;
* ``round(foreground_fraction * rois_per_image)`` foreground RoIs at most
  are drawn without replacement, the rest of the ``rois_per_image`` from
  the background; where there are too few, the rest is padding (weight
  0), so every image has the same number of RoIs and the step one shape;
* a foreground RoI's regression target is the box coder's encoding of its
  ground-truth box (``boxes.encode``, divided by ``boxes.BOX_STDS``);
* ``difficult`` objects take no part in training (Fast R-CNN's VOC reader
  leaves them out); they are kept for the test's average precision.

Scales (:func:`scale_factor`): an image is resized so its shorter side is
the scale ``s`` unless its longer side would then pass the cap, as Fast
R-CNN does. Fast R-CNN caps at 1,000 pixels when testing at 600 and at
2,000 when training on scales up to 1,200, the same 5/3 ratio; here every
scale ``s`` caps at ``max_size * s / test_scale`` (1,000 at 600, 2,000 at
1,200), and the image lies at the top-left of a square canvas of that
side, so each scale has one static shape. A training step draws one scale
from ``train_scales`` for all its images (Fast R-CNN draws one per image;
one per step keeps the step's shape whole), and mirrors each image with
probability 1/2 (Fast R-CNN trains on every image and its mirror). The
canvas around the image is the dataset's mean colour (``fill``): what
Fast R-CNN's zero padding after subtracting the mean is.

Evaluation (single scale, ``test_scale``): every proposal of the image
(or its first ``max_proposals``), padded with weight-0 regions to the
split's largest count, labelled as in training
for the test loss, with each image's scale factor, size and index, by
which the detections are mapped back and scored
(:attr:`DetectionSource.ground_truth`).

Every draw comes from (seed, epoch, position) or (seed, epoch, step)
alone, so a resumed run sees exactly the batches of an uninterrupted one.
"""

import math

import numpy as np
from jax.sharding import Mesh
from PIL import Image

from rotnet_jax import boxes as boxes_lib
from rotnet_jax.data import voc
from rotnet_jax.data import voc_source
from rotnet_jax.errors import InputError

# Fast R-CNN's overlap thresholds (its config FG_THRESH, BG_THRESH_HI/LO).
FOREGROUND_IOU = 0.5
BACKGROUND_IOU = (0.1, 0.5)
# Mixed into the seeds so detection draws never coincide with others.
_TRAIN_STREAM = 0x64657474   # 'dett'
_SCALE_STREAM = 0x64657473   # 'dets'


def scale_factor(height: int, width: int, scale: int, max_size: int
                 ) -> float:
  """The factor that brings the shorter side to `scale`, unless the longer
  one would then pass `max_size` (then the longer side becomes it)."""
  factor = scale / min(height, width)
  if round(factor * max(height, width)) > max_size:
    factor = max_size / max(height, width)
  return factor


def canvas_side(scale: int, test_scale: int, max_size: int) -> int:
  """The canvas side of `scale`: its cap, ``max_size * scale /
  test_scale``, rounded up."""
  return math.ceil(max_size * scale / test_scale)


def label_rois(rois: np.ndarray, gt_boxes: np.ndarray,
               gt_labels: np.ndarray):
  """Each RoI's best ground-truth overlap, its class and its box target.

  Args:
    rois: ``[R, 4]``.
    gt_boxes: ``[G, 4]``, the image's objects used for training.
    gt_labels: ``[G]``, their classes (0..19).

  Returns:
    ``(overlap, label, target)``: ``float [R]`` the largest IoU (0 without
    objects), ``int32 [R]`` the class + 1 of that object where the overlap
    is foreground, else 0 (background), ``float32 [R, 4]`` the encoded
    box of that object (0 for background).
  """
  count = len(rois)
  if not len(gt_boxes):
    return (np.zeros(count), np.zeros(count, np.int32),
            np.zeros((count, 4), np.float32))
  overlaps = boxes_lib.iou(rois, gt_boxes)
  best = overlaps.argmax(axis=1)
  overlap = overlaps[np.arange(count), best]
  foreground = overlap >= FOREGROUND_IOU
  label = np.where(foreground, gt_labels[best] + 1, 0).astype(np.int32)
  target = boxes_lib.encode(rois, gt_boxes[best]).astype(np.float32)
  target[~foreground] = 0.0
  return overlap, label, target


def sample_rois(rng: np.random.Generator, proposals: np.ndarray,
                gt_boxes: np.ndarray, gt_labels: np.ndarray, *,
                rois_per_image: int, foreground_fraction: float) -> dict:
  """Fast R-CNN's RoI sample of one training image.

  Args:
    rng: the image's generator.
    proposals: ``[P, 4]`` in the (scaled, mirrored) image's pixels.
    gt_boxes: ``[G, 4]`` non-difficult objects, same pixels.
    gt_labels: ``[G]``.
    rois_per_image: RoIs per image, padding included.
    foreground_fraction: the most of them that are foreground.

  Returns:
    ``{'rois': f32 [N, 4], 'roi_labels': int32 [N], 'roi_targets': f32
    [N, 4], 'roi_weights': f32 [N]}`` with ``N = rois_per_image``:
    foreground first, then background, then padding (weight 0).
  """
  rois = np.concatenate([gt_boxes, proposals]).astype(np.float32)
  overlap, label, target = label_rois(rois, gt_boxes, gt_labels)
  foreground = np.flatnonzero(overlap >= FOREGROUND_IOU)
  low, high = BACKGROUND_IOU
  background = np.flatnonzero((overlap >= low) & (overlap < high))
  wanted = round(foreground_fraction * rois_per_image)
  foreground = rng.choice(foreground, min(wanted, len(foreground)),
                          replace=False)
  background = rng.choice(
      background, min(rois_per_image - len(foreground), len(background)),
      replace=False)
  chosen = np.concatenate([foreground, background]).astype(np.int64)
  padding = rois_per_image - len(chosen)
  label = label[chosen]
  label[len(foreground):] = 0
  return {
      'rois': _pad(rois[chosen], padding),
      'roi_labels': _pad(label, padding),
      'roi_targets': _pad(target[chosen], padding),
      'roi_weights': _pad(np.ones(len(chosen), np.float32), padding)}


def _pad(array: np.ndarray, count: int) -> np.ndarray:
  return np.concatenate([array, np.zeros((count,) + array.shape[1:],
                                         array.dtype)])


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """Boxes of the image mirrored left-right (`width` its width)."""
  flipped = boxes.copy()
  flipped[:, 0] = width - 1 - boxes[:, 2]
  flipped[:, 2] = width - 1 - boxes[:, 0]
  return flipped


class DetectionSource(voc_source.VOCSource):
  """Host batches of a VOC2007 detection split; a ``data.source.Source``.

  Batches: ``{'image': uint8 [B, S, S, 3], 'rois': f32 [B, N, 4],
  'roi_labels': int32 [B, N], 'roi_targets': f32 [B, N, 4],
  'roi_weights': f32 [B, N], 'mask': f32 [B]}``; evaluation batches also
  hold ``'scale': f32 [B]`` (the resize factor), ``'size': int32 [B, 2]``
  (the image's height and width) and ``'index': int32 [B]`` (its position
  in the split). ``S`` is the canvas side of the step's scale, ``N``
  ``rois_per_image`` (training) or the most proposals an image of the
  split has (evaluation).

  Attributes:
    ground_truth: per image of the split, ``(boxes, labels, difficult)``
      in its original pixels: what the test's average precision is
      scored against.
    ids: the split's image ids (the devkit's results files name them).
    split_name: the split's name.
  """

  def __init__(self, split: voc.DetectionSplit, proposals, *, mesh: Mesh,
               batch_size: int, train: bool, seed: int, train_scales,
               test_scale: int, max_size: int, rois_per_image: int,
               foreground_fraction: float, fill=(0, 0, 0),
               epoch_length: int = 0):
    """Sets up reading `split`.

    Args:
      split: the opened split.
      proposals: per image, ``float32 [P, 4]`` proposals (original pixels).
      mesh: the data mesh.
      batch_size: global batch size (images).
      train: sample, mirror and shuffle if True; keep every proposal and
        the order, and pad the last batch, if False.
      seed: run seed.
      train_scales: the shorter sides drawn from in training.
      test_scale: the shorter side in evaluation.
      max_size: the longer side's cap at `test_scale`.
      rois_per_image: RoIs per training image.
      foreground_fraction: the most of them that are foreground.
      fill: the canvas colour around the image, RGB 0..255.
      epoch_length: images per training epoch (0: one pass).

    Raises:
      InputError: proposals for another number of images; sizes that
        cannot work.
    """
    if len(proposals) != len(split):
      raise InputError(
          f'proposals hold {len(proposals)} images, split {split.split!r} '
          f'of {split.dataset} has {len(split)}')
    scales = tuple(int(s) for s in train_scales)
    if (not scales or min(scales + (test_scale, max_size)) <= 0 or
        rois_per_image <= 0 or
        not 0 <= foreground_fraction <= 1):
      raise InputError(
          f'detection source: train_scales={scales}, test_scale='
          f'{test_scale}, max_size={max_size}, rois_per_image='
          f'{rois_per_image} must be positive, foreground_fraction='
          f'{foreground_fraction} in [0, 1]')
    self.class_names = voc.CLASSES
    self.segmentation = False
    self.train_scales = scales
    self.test_scale = int(test_scale)
    self.max_size = int(max_size)
    self.rois_per_image = rois_per_image
    self.foreground_fraction = foreground_fraction
    # Evaluation regions per image: every proposal (the caller may have
    # kept only the first ones), padded to the split's largest count.
    self.max_proposals = max((len(p) for p in proposals), default=1)
    self.fill = np.clip(np.round(np.asarray(fill, np.float64)), 0,
                        255).astype(np.uint8)
    self._proposals = proposals
    self.ground_truth = tuple(zip(split.boxes, split.labels,
                                  split.difficult))
    self.ids = split.ids
    self.split_name = split.split
    self._set_up_batches(split, mesh=mesh, batch_size=batch_size,
                         train=train, seed=seed, epoch_length=epoch_length)
    self.image_size = canvas_side(max(scales + (test_scale,)), test_scale,
                                  max_size)

  def step_scale(self, epoch: int, step: int) -> int:
    """The shorter side of every image of `step` of `epoch`."""
    if not self.train:
      return self.test_scale
    rng = np.random.default_rng([self.seed, _SCALE_STREAM, epoch, step])
    return self.train_scales[int(rng.integers(len(self.train_scales)))]

  def example(self, epoch: int, position: int, index: int) -> dict:
    """The example at `position` of `epoch` (image `index`), as numpy
    arrays without the batch axis; pure and thread-safe."""
    # Padding rows (position -1) exist only in evaluation, whose scale is
    # the same at every step.
    step = max(position, 0) // self.batch_size
    scale = self.step_scale(epoch, step)
    side = canvas_side(scale, self.test_scale, self.max_size)
    if index < 0:
      return self._detection_padding(side)
    split = self._split
    image = voc_source.decode(split, index)
    height, width = split.sizes[index]
    proposals = self._proposals[index]
    keep = ~split.difficult[index]
    gt_boxes, gt_labels = split.boxes[index][keep], split.labels[index][keep]
    if self.train:
      rng = np.random.default_rng([self.seed, _TRAIN_STREAM, epoch,
                                   position])
      if rng.integers(2):  # Mirrored before resizing, boxes with it.
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        proposals = flip_boxes(proposals, width)
        gt_boxes = flip_boxes(gt_boxes, width)
    factor = scale_factor(height, width, scale, side)
    resized = (max(1, min(side, round(width * factor))),
               max(1, min(side, round(height * factor))))
    pixels = np.asarray(image.resize(resized, Image.Resampling.BILINEAR),
                        np.uint8)
    if self.train:
      example = sample_rois(
          rng, proposals * factor, gt_boxes * factor, gt_labels,
          rois_per_image=self.rois_per_image,
          foreground_fraction=self.foreground_fraction)
    else:
      rois = (proposals * factor).astype(np.float32)
      _, label, target = label_rois(rois, gt_boxes * factor, gt_labels)
      padding = self.max_proposals - len(rois)
      example = {'rois': _pad(rois, padding),
                 'roi_labels': _pad(label, padding),
                 'roi_targets': _pad(target, padding),
                 'roi_weights': _pad(np.ones(len(rois), np.float32),
                                     padding),
                 'scale': np.float32(factor),
                 'size': np.asarray([height, width], np.int32),
                 'index': np.int32(index)}
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[...] = self.fill
    canvas[:pixels.shape[0], :pixels.shape[1]] = pixels
    return {'image': canvas, **example, 'mask': np.float32(1)}

  def _detection_padding(self, side: int) -> dict:
    count = self.rois_per_image if self.train else self.max_proposals
    example = {'image': np.zeros((side, side, 3), np.uint8),
               'rois': np.zeros((count, 4), np.float32),
               'roi_labels': np.zeros(count, np.int32),
               'roi_targets': np.zeros((count, 4), np.float32),
               'roi_weights': np.zeros(count, np.float32),
               'mask': np.float32(0)}
    if not self.train:
      example.update(scale=np.float32(1), size=np.ones(2, np.int32),
                     index=np.int32(-1))
    return example
