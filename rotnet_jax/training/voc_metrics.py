"""PASCAL VOC's metrics: average precision of classification and of
detection, mean IoU of segmentation.

Classification targets follow the devkit: per image and class, 1 (the
class is present), -1 (absent) or 0 (only ``difficult`` objects of the
class: the image is ignored for that class). Three forms of AP, each per
class over the images not ignored for it:

* :func:`average_precision` (``mAP``), what the RotNet paper's VOC numbers
  use: Krähenbühl et al.'s ``voc-classification`` (``src/train_cls.py``)
  scores each class with scikit-learn's ``average_precision_score`` after
  subtracting ``1e-5`` from the score of every positive image
  (``scr - 1e-5 * gts``, "to make AP work for tied scores"): a positive
  tied with a negative ranks below it. The offset also moves a positive
  scored less than ``1e-5`` above a negative below it, as there.
* :func:`average_precision_11point` (``mAP_11point``): the VOC2007
  devkit's ``VOCevalcls``, the mean of the interpolated precision (the
  best precision at that recall or more) at recall 0, 0.1, ..., 1.
* :func:`average_precision_all_points` (``mAP_all_points``): the VOC2010+
  devkit's area under the interpolated precision-recall curve, which is
  what Goyal et al.'s linear-SVM benchmark (``tools/svm/svm_helper.py``,
  ``calculate_ap``) reports.

The two devkit forms rank tied scores as one block (precision and recall
are taken only after the last of a run of equal scores), so they do not
depend on the order of tied images; the devkit's MATLAB sort would order
them by index, Goyal et al.'s ``np.argsort`` arbitrarily. The 11 recall
levels are compared exactly (``tp * 10 >= k * positives``): the devkit's
floating ``0:0.1:1`` makes a recall of exactly 0.3 miss the level 0.3.

A class with no positive image in a split has no AP (NaN) and is left out
of the means.

Detection: :func:`detection_average_precision` is the VOC2007 devkit's
``VOCevaldet`` (each detection, best score first, matched with the box of
its class it overlaps most; duplicates are false positives, matches of a
difficult box ignored) with the 11-point AP as above, and the all-points
AP beside it. Unlike the classification forms, detections of equal score
are taken one by one in their given order, as the devkit's stable sort
takes them.

Segmentation: :func:`confusion_sums` counts (true label, predicted label)
pixel pairs inside ``jax.jit`` (summed over a split, outside), and
:func:`mean_iou` turns the split's counts into the devkit's per-class
``TP / (TP + FP + FN)`` and its mean.
"""

import jax
import jax.numpy as jnp
import numpy as np

from rotnet_jax import boxes as boxes_lib
from rotnet_jax.data import voc
from rotnet_jax.errors import InputError

# What voc-classification subtracts from the scores of positive images.
TIE_OFFSET = 1e-5
# The devkit's VOC2007 recall levels: k / 10 for k = 0..10.
_RECALL_LEVELS = 10


def check_target_values(targets: np.ndarray, what: str = '') -> None:
  """Raises InputError unless `targets` hold only 1, 0 and -1 (the
  devkit's convention); `what` prefixes the message (e.g. ``'--train '``).
  """
  values = np.unique(targets)
  if not np.isin(values, (-1, 0, 1)).all():
    raise InputError(f'{what}targets hold {values.tolist()}: expected 1 '
                     '(present), 0 (ignored: only difficult objects) and -1 '
                     '(absent)')


def _check_scores(scores, targets) -> tuple[np.ndarray, np.ndarray]:
  """`scores` as float64 and `targets` as int8, both ``[N, C]``."""
  scores = np.asarray(scores, np.float64)
  targets = np.asarray(targets)
  if scores.ndim != 2 or scores.shape != targets.shape:
    raise InputError(f'scores {scores.shape} and targets {targets.shape}: '
                     'expected two arrays of the same shape [N, C]')
  check_target_values(targets)
  if not np.isfinite(scores).all():
    raise InputError(f'scores hold {int(np.sum(~np.isfinite(scores)))} '
                     'NaN or infinite values')
  return scores, targets.astype(np.int8)


def _per_class(scores, targets, average_precision_of) -> np.ndarray:
  """``average_precision_of(scores, positive)`` of each class over its
  images not ignored; NaN for a class without a positive image."""
  scores, targets = _check_scores(scores, targets)
  result = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    kept = targets[:, c] != 0
    positive = targets[kept, c] > 0
    if positive.any():
      result[c] = average_precision_of(scores[kept, c], positive)
  return result


def average_precision(scores, targets) -> np.ndarray:
  """Per-class AP as voc-classification computes it (module docstring).

  Args:
    scores: ``[N, C]``, higher means more likely present.
    targets: ``[N, C]`` of 1 (present), 0 (ignored) and -1 (absent).

  Returns:
    ``float64 [C]``: scikit-learn's ``average_precision_score`` of each
    class over its non-ignored images, the scores of positives lowered by
    :data:`TIE_OFFSET`; NaN for a class without a positive image.

  Raises:
    InputError: shapes that differ or are not ``[N, C]``, other target
      values, or scores that are not finite.
  """
  # Imported here: every run imports this module (through
  # training/metrics.py), and scikit-learn takes seconds to import.
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top
  return _per_class(scores, targets, lambda s, positive: float(
      sklearn_metrics.average_precision_score(
          positive, s - TIE_OFFSET * positive)))


def _precision_recall(scores: np.ndarray, positive: np.ndarray):
  """Precision and true-positive counts after each run of equal scores,
  in decreasing score order."""
  order = np.argsort(-scores, kind='stable')
  ranked = scores[order]
  true_positives = np.cumsum(positive[order])
  seen = np.arange(1, len(ranked) + 1)
  last_of_run = np.append(ranked[1:] != ranked[:-1], True)
  true_positives, seen = true_positives[last_of_run], seen[last_of_run]
  return true_positives / seen, true_positives


def _eleven_point(scores: np.ndarray, positive: np.ndarray) -> float:
  precision, true_positives = _precision_recall(scores, positive)
  positives = int(positive.sum())
  total = 0.0
  for level in range(_RECALL_LEVELS + 1):
    # recall >= level / 10, in integers.
    reached = true_positives * _RECALL_LEVELS >= level * positives
    total += precision[reached].max() if reached.any() else 0.0
  return total / (_RECALL_LEVELS + 1)


def average_precision_11point(scores, targets) -> np.ndarray:
  """Per-class AP of the VOC2007 devkit (``VOCevalcls``): the mean over
  recall 0, 0.1, ..., 1 of the best precision at that recall or more.

  Args and Raises: as :func:`average_precision`.

  Returns:
    ``float64 [C]``; NaN for a class without a positive image.
  """
  return _per_class(scores, targets, _eleven_point)


def _all_points(scores: np.ndarray, positive: np.ndarray) -> float:
  precision, true_positives = _precision_recall(scores, positive)
  recall = true_positives / positive.sum()
  # The best precision at each recall or more, then the area of the steps.
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  return float(np.sum(np.diff(recall, prepend=0.0) * envelope))


def average_precision_all_points(scores, targets) -> np.ndarray:
  """Per-class AP of the VOC2010+ devkit (and of Goyal et al.'s SVM
  benchmark): the area under the precision-recall curve, each precision
  replaced by the best one at that recall or more.

  Args and Raises: as :func:`average_precision`.

  Returns:
    ``float64 [C]``; NaN for a class without a positive image.
  """
  return _per_class(scores, targets, _all_points)


def _mean(values: np.ndarray) -> float:
  """The mean of the values that are not NaN (NaN if none is)."""
  kept = values[~np.isnan(values)]
  return float(kept.mean()) if len(kept) else float('nan')


def mean_average_precision(scores, targets) -> dict:
  """Every form of AP of every class, and their means.

  Args and Raises: as :func:`average_precision`.

  Returns:
    ``{'mAP', 'mAP_11point', 'mAP_all_points'}``: means over the classes
    with a positive image (NaN if none has one), and ``{'ap',
    'ap_11point', 'ap_all_points'}``, the ``float64 [C]`` per-class values
    (NaN for a class without a positive image).
  """
  result = {'ap': average_precision(scores, targets),
            'ap_11point': average_precision_11point(scores, targets),
            'ap_all_points': average_precision_all_points(scores, targets)}
  for name in list(result):
    result['mAP' + name[2:]] = _mean(result[name])
  return result


def confusion_sums(logits: jax.Array, labels: jax.Array, num_classes: int,
                   ignore_label: int = 255) -> jax.Array:
  """Pixel counts by true and predicted label, for use inside ``jax.jit``.

  Args:
    logits: ``[..., num_classes]`` per-pixel class scores; the prediction
      is their argmax.
    labels: ``[...]`` true labels, the shape of ``logits`` without its last
      axis; `ignore_label` (VOC's object borders) and any value outside
      ``0..num_classes - 1`` are not counted.
    num_classes: ``C``, static.
    ignore_label: the label of pixels that are not scored.

  Returns:
    ``int32 [C, C]``: entry ``[t, p]`` counts the scored pixels of true
    label ``t`` predicted as ``p``. Counts of one batch; sum them over a
    split in int64 outside (a split of VOC has about 2^28 pixels).

  Raises:
    ValueError: shapes that do not match (at trace time).
  """
  if logits.shape[-1] != num_classes or labels.shape != logits.shape[:-1]:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape}: '
                     f'expected [..., {num_classes}] and [...]')
  predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  labels = labels.astype(jnp.int32)
  scored = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  cells = jnp.where(scored, labels * num_classes + predicted, 0)
  counts = jnp.bincount(cells.ravel(), weights=scored.ravel().astype(
      jnp.int32), length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def mean_iou(confusion) -> dict:
  """The devkit's segmentation scores of a split's pixel counts.

  Args:
    confusion: ``[C, C]`` counts summed over the whole split (rows: true
      label, columns: predicted), as :func:`confusion_sums` gives them.

  Returns:
    ``{'iou': float64 [C], 'mIoU', 'pixel_accuracy'}``: per class
    ``TP / (TP + FP + FN)`` over the split's pixels, where TP is the
    diagonal, FP the rest of the class's column and FN the rest of its
    row; a class absent from both the truth and the predictions has no
    IoU (NaN) and is left out of the mean (a class predicted but never
    true has IoU 0 and counts). ``pixel_accuracy`` is the fraction of
    scored pixels predicted right. NaN where nothing was counted.

  Raises:
    InputError: not a square matrix of non-negative counts.
  """
  confusion = np.asarray(confusion)
  if (confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or
      (confusion < 0).any()):
    raise InputError(f'confusion of shape {confusion.shape}: expected '
                     'non-negative counts [C, C]')
  confusion = confusion.astype(np.int64)
  true_positives = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - true_positives
  iou = np.full(len(confusion), np.nan)
  present = union > 0
  iou[present] = true_positives[present] / union[present]
  total = confusion.sum()
  return {'iou': iou, 'mIoU': _mean(iou),
          'pixel_accuracy': (float(true_positives.sum() / total) if total
                             else float('nan'))}


def _detection_check(detections, ground_truth, num_classes: int,
                     iou_threshold: float):
  """The arguments of :func:`detection_average_precision` as arrays:
  per class ``(image_index int64 [K], score float64 [K], boxes [K, 4])``,
  and every ground-truth box in one list ``(image int64 [T], boxes [T, 4],
  labels int64 [T], difficult bool [T])`` in annotation order."""
  if not 0 < iou_threshold <= 1:
    raise InputError(f'iou_threshold {iou_threshold}: expected a number in '
                     '(0, 1]')
  if len(detections) != num_classes:
    raise InputError(f'detections of {len(detections)} classes: expected '
                     f'one (image_index, score, boxes) per class, '
                     f'num_classes = {num_classes}')
  num_images = len(ground_truth)
  gt_image, gt_boxes, gt_labels, gt_difficult = [], [], [], []
  for i, (boxes, labels, difficult) in enumerate(ground_truth):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    difficult = np.asarray(difficult, bool).reshape(-1)
    if not len(boxes) == len(labels) == len(difficult):
      raise InputError(f'ground truth of image {i}: {len(boxes)} boxes, '
                       f'{len(labels)} labels, {len(difficult)} difficult '
                       'flags: expected one of each per object')
    if len(labels) and (labels.dtype.kind not in 'iu' or labels.min() < 0 or
                        labels.max() >= num_classes):
      raise InputError(f'ground truth of image {i}: labels '
                       f'{np.unique(labels).tolist()}: expected integers in '
                       f'0..{num_classes - 1}')
    gt_image.append(np.full(len(boxes), i, np.int64))
    gt_boxes.append(boxes)
    gt_labels.append(labels.astype(np.int64))
    gt_difficult.append(difficult)
  ground = (np.concatenate(gt_image or [np.zeros(0, np.int64)]),
            np.concatenate(gt_boxes or [np.zeros((0, 4))]),
            np.concatenate(gt_labels or [np.zeros(0, np.int64)]),
            np.concatenate(gt_difficult or [np.zeros(0, bool)]))
  checked = []
  for c, (image_index, scores, boxes) in enumerate(detections):
    image_index = np.asarray(image_index).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(image_index) == len(scores) == len(boxes):
      raise InputError(f'detections of class {c}: {len(image_index)} image '
                       f'indices, {len(scores)} scores, {len(boxes)} boxes: '
                       'expected one of each per detection')
    if len(image_index) and image_index.dtype.kind not in 'iu':
      raise InputError(f'detections of class {c}: image indices of dtype '
                       f'{image_index.dtype}: expected integers in '
                       f'0..{num_images - 1}, the ground truth\'s images')
    outside = (image_index < 0) | (image_index >= num_images)
    if outside.any():
      raise InputError(f'detections of class {c}: image index '
                       f'{image_index[outside][0]} out of range: expected '
                       f'0..{num_images - 1}, one of the {num_images} '
                       'images of the ground truth')
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
      raise InputError(f'detections of class {c}: scores or boxes hold NaN '
                       'or infinite values')
    checked.append((image_index.astype(np.int64), scores, boxes))
  return checked, ground


def _best_overlaps(image_index, boxes, gt_image, gt_boxes):
  """For each detection, the ground-truth box of its image that it
  overlaps most (the first of equal ones, as the devkit's strict ``>``)
  and that IoU; ``(-1, 0.0)`` where its image has no box of the class,
  IoU 0 where none overlaps."""
  best = np.full(len(boxes), -1, np.int64)
  overlap = np.zeros(len(boxes))
  # Both sorted by image (stably: a box keeps its annotation order within
  # its image), each image a slice of each.
  det_order = np.argsort(image_index, kind='stable')
  gt_order = np.argsort(gt_image, kind='stable')
  det_images, gt_images = image_index[det_order], gt_image[gt_order]
  for image in np.intersect1d(det_images, gt_images):
    dets = det_order[np.searchsorted(det_images, image):
                     np.searchsorted(det_images, image, 'right')]
    gts = gt_order[np.searchsorted(gt_images, image):
                   np.searchsorted(gt_images, image, 'right')]
    ious = boxes_lib.iou(boxes[dets], gt_boxes[gts])
    columns = np.argmax(ious, axis=1)
    best[dets] = gts[columns]
    overlap[dets] = ious[np.arange(len(dets)), columns]
  return best, overlap


def _detection_ap(true_positive: np.ndarray, false_positive: np.ndarray,
                  positives: int) -> tuple[float, float]:
  """The 11-point and all-points AP of detections in decreasing score
  order (ignored ones neither true nor false)."""
  true_positives = np.cumsum(true_positive)
  counted = true_positives + np.cumsum(false_positive)
  # Undefined before the first counted detection (only ignored ones so
  # far): the devkit's NaN, which MATLAB's max skips; 0 does the same
  # there, as the recall is 0 too.
  precision = np.divide(true_positives, counted,
                        out=np.zeros(len(counted)), where=counted > 0)
  eleven = 0.0
  for level in range(_RECALL_LEVELS + 1):
    # recall >= level / 10, in integers (module docstring).
    reached = true_positives * _RECALL_LEVELS >= level * positives
    eleven += precision[reached].max() if reached.any() else 0.0
  recall = true_positives / positives
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  all_points = float(np.sum(np.diff(recall, prepend=0.0) * envelope))
  return eleven / (_RECALL_LEVELS + 1), all_points


def detection_average_precision(detections, ground_truth, *,
                                num_classes: int = 20,
                                iou_threshold: float = 0.5) -> dict:
  """Per-class detection AP as the VOC2007 devkit's ``VOCevaldet``.

  Per class, the detections are taken by decreasing score (equal scores in
  their given order: the devkit's stable sort). Each is matched with the
  ground-truth box of the class in its image that it overlaps most (IoU
  with the +1 convention, difficult boxes included). If that IoU reaches
  `iou_threshold`: a difficult box makes the detection ignored (neither
  true nor false positive); a box not detected before makes it a true
  positive and marks the box detected; an already detected one makes it a
  false positive (a duplicate). Below `iou_threshold`, or with no box of
  the class in its image, it is a false positive. Recall counts the class's
  non-difficult boxes. The 11-point AP is the mean over recall 0, 0.1, ...,
  1 of the best precision at that recall or more (0 where never reached;
  the levels compared exactly, as in :func:`average_precision_11point`);
  the all-points AP (VOC2010+) the area under the same envelope.

  Boxes follow :mod:`rotnet_jax.boxes`' convention (0-based, inclusive);
  the devkit's 1-based ones give the same IoUs.

  Args:
    detections: one ``(image_index, score, boxes)`` per class:
      ``int [K]`` indices into `ground_truth`, ``float [K]`` scores (higher
      is more confident), ``[K, 4]`` boxes.
    ground_truth: one ``(boxes, labels, difficult)`` per image: ``[G, 4]``
      boxes, ``int [G]`` classes in ``0..num_classes - 1``, ``bool [G]``
      the devkit's difficult flags; ``G`` may be 0.
    num_classes: ``C``, the number of classes (VOC's 20).
    iou_threshold: the IoU a match needs, in ``(0, 1]``.

  Returns:
    ``{'AP', 'AP_all_points'}``: ``float64 [C]``, NaN for a class without
    a non-difficult box, 0 for one with boxes but no detection; ``{'mAP',
    'mAP_all_points'}``: their means over the classes that are not NaN
    (NaN if all are).

  Raises:
    InputError: (a ValueError) not one entry per class, lengths that
      differ within an entry, an image index out of range, a label out of
      range, scores or boxes that are not finite, or `iou_threshold` out
      of range.
  """
  detections, (gt_image, gt_boxes, gt_labels,
               gt_difficult) = _detection_check(detections, ground_truth,
                                                num_classes, iou_threshold)
  eleven = np.full(num_classes, np.nan)
  all_points = np.full(num_classes, np.nan)
  for c, (image_index, scores, boxes) in enumerate(detections):
    of_class = np.flatnonzero(gt_labels == c)
    difficult = gt_difficult[of_class]
    positives = int(np.sum(~difficult))
    if not positives:
      continue
    order = np.argsort(-scores, kind='stable')
    best, overlap = _best_overlaps(image_index[order], boxes[order],
                                   gt_image[of_class], gt_boxes[of_class])
    true_positive = np.zeros(len(order))
    false_positive = np.zeros(len(order))
    detected = np.zeros(len(of_class), bool)
    # In score order: whether a box is already detected depends on the
    # detections before.
    matches = (overlap >= iou_threshold).tolist()
    for d, (box, matched) in enumerate(zip(best.tolist(), matches)):
      if not matched:
        false_positive[d] = 1
      elif difficult[box]:
        continue
      elif detected[box]:
        false_positive[d] = 1
      else:
        true_positive[d] = 1
        detected[box] = True
    eleven[c], all_points[c] = _detection_ap(true_positive, false_positive,
                                             positives)
  return {'AP': eleven, 'AP_all_points': all_points, 'mAP': _mean(eleven),
          'mAP_all_points': _mean(all_points)}


def devkit_detection_files(detections, ids, split: str) -> dict[str, str]:
  """Detections as the VOC devkit's results files, one per class.

  Args:
    detections: per class, ``(image_index [K], score [K], boxes [K, 4])``
      (0-based pixels), as :func:`detection_average_precision` takes them.
    ids: the split's image ids.
    split: the split's name.

  Returns:
    ``{'comp4_det_<split>_<class>.txt': text}``, a line per detection:
    ``<image id> <score> <xmin> <ymin> <xmax> <ymax>`` in the devkit's
    1-based pixels, which its ``VOCevaldet`` reads.
  """
  files = {}
  for name, (images, scores, boxes) in zip(voc.CLASSES, detections):
    lines = [f'{ids[int(i)]} {score:.6f} ' +
             ' '.join(f'{v + 1:.1f}' for v in box)
             for i, score, box in zip(images, scores, boxes)]
    files[f'comp4_det_{split}_{name}.txt'] = ''.join(f'{l}\n' for l in lines)
  return files
