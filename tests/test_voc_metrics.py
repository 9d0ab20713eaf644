"""PASCAL VOC's metrics (``training/voc_metrics.py``) on hand-worked
examples: the three forms of average precision, and mean IoU from pixel
counts made inside ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from rotnet_jax.errors import InputError
from rotnet_jax.training import voc_metrics

# One class, best score first: positive, negative, positive, negative,
# positive.
ALTERNATING = ([0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, 1, -1, 1])
# Positive, negative, negative, positive, positive: the precision after
# the second positive (1/2) is below a later one (3/5).
DIP = ([0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, -1, 1, 1])


def _column(values):
  return np.asarray(values, np.float64)[:, None]


def _ap(function, scores, targets) -> float:
  return float(function(_column(scores), _column(targets))[0])


def test_alternating_ranking_by_hand():
  # (recall, precision) after each image: (1/3, 1), (1/3, 1/2),
  # (2/3, 2/3), (2/3, 1/2), (1, 3/5).
  # scikit-learn: sum of recall steps x precision there:
  #   1/3 (1 + 2/3 + 3/5) = 34/45.
  assert _ap(voc_metrics.average_precision, *ALTERNATING) == pytest.approx(
      34 / 45)
  # 11-point: recall >= 0, .1, .2, .3 reach precision 1 (4 levels); .4,
  # .5, .6 at best 2/3 (3 levels); .7 .. 1 only 3/5 (4 levels).
  assert _ap(voc_metrics.average_precision_11point,
             *ALTERNATING) == pytest.approx((4 + 3 * 2 / 3 + 4 * 3 / 5) / 11)
  # All points: the precision at each recall step is already the best
  # from there on: 34/45 too.
  assert _ap(voc_metrics.average_precision_all_points,
             *ALTERNATING) == pytest.approx(34 / 45)


def test_interpolation_by_hand():
  # (recall, precision): (1/3, 1), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2),
  # (1, 3/5). scikit-learn takes 1/2 at recall 2/3: (1 + 1/2 + 3/5) / 3.
  assert _ap(voc_metrics.average_precision, *DIP) == pytest.approx(0.7)
  # The devkits take the best precision at that recall or more: 3/5.
  assert _ap(voc_metrics.average_precision_all_points,
             *DIP) == pytest.approx((1 + 3 / 5 + 3 / 5) / 3)
  assert _ap(voc_metrics.average_precision_11point,
             *DIP) == pytest.approx((4 * 1 + 7 * 3 / 5) / 11)


def test_a_positive_tied_with_a_negative_ranks_below_it():
  # Scores tied exactly: both forms rank the tie as one block.
  tied = ([0.5, 0.5, 0.2], [1, -1, 1])
  # After the block: recall 1/2, precision 1/2; then recall 1, 2/3.
  assert _ap(voc_metrics.average_precision, *tied) == pytest.approx(7 / 12)
  # 11-point: the best precision at any recall level is 2/3, whichever
  # of the tied images comes first in the array.
  for scores, targets in (tied, ([0.5, 0.5, 0.2], [-1, 1, 1])):
    assert _ap(voc_metrics.average_precision_11point, scores,
               targets) == pytest.approx(2 / 3)
  # voc-classification's offset: a positive less than 1e-5 above a
  # negative is lowered below it (1e-5), so ranks as if after it: 7/12,
  # where the plain order (positive, negative, positive) gives 5/6.
  near = ([0.5, 0.499995, 0.2], [1, -1, 1])
  assert _ap(voc_metrics.average_precision, *near) == pytest.approx(7 / 12)
  assert _ap(voc_metrics.average_precision_all_points,
             *near) == pytest.approx(5 / 6)


def test_recall_levels_are_compared_exactly():
  # Ten positives; the fourth image is the only negative. Recall 0.3 is
  # reached at precision 1 (3/3). The levels 0, .1, .2, .3 get 1; the seven
  # from .4 the best later precision, 10/11 (the last image).
  targets = [1, 1, 1, -1] + [1] * 7
  scores = np.linspace(1, 0, len(targets))
  assert _ap(voc_metrics.average_precision_11point, scores,
             targets) == pytest.approx((4 + 7 * 10 / 11) / 11)


def test_ignored_images_change_nothing():
  scores, targets = ALTERNATING
  # An ignored image above everything and one in the middle, either label
  # would change the ranking.
  with_ignored = ([1.0] + scores[:2] + [0.75] + scores[2:],
                  [0] + targets[:2] + [0] + targets[2:])
  for function in (voc_metrics.average_precision,
                   voc_metrics.average_precision_11point,
                   voc_metrics.average_precision_all_points):
    assert _ap(function, *with_ignored) == pytest.approx(
        _ap(function, *ALTERNATING))


def test_matches_scikit_learn_with_the_offset_on_random_scores():
  rng = np.random.default_rng(0)
  # Scores on a coarse grid: many ties.
  scores = rng.integers(0, 8, (300, 5)) / 8
  targets = rng.choice([1, 0, -1], (300, 5), p=[0.3, 0.1, 0.6])
  ap = voc_metrics.average_precision(scores, targets)
  for c in range(5):
    kept = targets[:, c] != 0
    positive = targets[kept, c] == 1
    expected = sklearn_metrics.average_precision_score(
        positive, scores[kept, c] - 1e-5 * positive)
    assert ap[c] == pytest.approx(expected)


def test_a_class_without_positive_is_nan_and_left_out_of_the_mean():
  scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.1, 0.3, 0.9]])
  # Class 1: no positive (one ignored, two absent). Class 2: positives
  # only ignored ones.
  targets = np.array([[1, -1, 0], [-1, 0, -1], [-1, -1, -1]])
  result = voc_metrics.mean_average_precision(scores, targets)
  for name in ('ap', 'ap_11point', 'ap_all_points'):
    assert result[name][0] == pytest.approx(1.0)
    assert np.isnan(result[name][1:]).all()
  assert result['mAP'] == result['mAP_11point'] == pytest.approx(1.0)
  assert result['mAP_all_points'] == pytest.approx(1.0)
  # Two classes: the mean of those with a positive.
  targets[:, 1] = [-1, 1, -1]
  scores[:, 1] = [0.9, 0.8, 0.1]  # Negative first: AP 1/2.
  result = voc_metrics.mean_average_precision(scores, targets)
  assert result['mAP'] == pytest.approx((1 + 0.5) / 2)
  none = voc_metrics.mean_average_precision(scores[:, 2:], targets[:, 2:])
  assert np.isnan(none['mAP']) and np.isnan(none['mAP_11point'])


def test_bad_inputs():
  good = np.zeros((3, 2)), np.ones((3, 2), np.int8)
  with pytest.raises(InputError, match='same shape'):
    voc_metrics.average_precision(good[0], good[1][:2])
  with pytest.raises(InputError, match=r'hold \[1, 2\]'):
    voc_metrics.average_precision(good[0], good[1] * np.array([1, 2]))
  scores = good[0].copy()
  scores[1, 1] = np.nan
  with pytest.raises(InputError, match='1 NaN'):
    voc_metrics.average_precision(scores, good[1])
  with pytest.raises(InputError, match='non-negative counts'):
    voc_metrics.mean_iou(np.zeros((2, 3)))


# Segmentation.


def test_mean_iou_by_hand():
  # Class 2 is neither true nor predicted anywhere: left out of the mean.
  confusion = np.array([[5, 1, 0],
                        [2, 3, 0],
                        [0, 0, 0]])
  scores = voc_metrics.mean_iou(confusion)
  # IoU_0 = 5 / (5 + 2 + 1); IoU_1 = 3 / (3 + 1 + 2).
  np.testing.assert_allclose(scores['iou'][:2], [5 / 8, 1 / 2])
  assert np.isnan(scores['iou'][2])
  assert scores['mIoU'] == pytest.approx((5 / 8 + 1 / 2) / 2)
  assert scores['pixel_accuracy'] == pytest.approx(8 / 11)
  # A class predicted but never true has IoU 0, and counts.
  scores = voc_metrics.mean_iou(np.array([[4, 1], [0, 0]]))
  np.testing.assert_allclose(scores['iou'], [4 / 5, 0])
  assert scores['mIoU'] == pytest.approx(0.4)
  empty = voc_metrics.mean_iou(np.zeros((2, 2), np.int64))
  assert np.isnan(empty['mIoU']) and np.isnan(empty['pixel_accuracy'])


def _numpy_confusion(logits, labels, num_classes, ignore):
  predicted = np.argmax(logits, axis=-1).ravel()
  labels = labels.ravel()
  kept = (labels != ignore) & (labels >= 0) & (labels < num_classes)
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels[kept], predicted[kept]), 1)
  return counts


def test_confusion_sums_inside_jit_equals_numpy():
  num_classes = 4
  logits = jax.random.normal(jax.random.key(0), (2, 6, 7, num_classes))
  labels = np.array(jax.random.randint(jax.random.key(1), (2, 6, 7), 0,
                                        num_classes))
  labels[0, :2] = 255  # Object borders.
  labels[1, 0, :3] = 7  # Not a class either.
  counted = jax.jit(voc_metrics.confusion_sums, static_argnums=2)(
      logits, jnp.asarray(labels, jnp.uint8), num_classes)
  assert counted.dtype == jnp.int32 and counted.shape == (4, 4)
  expected = _numpy_confusion(np.asarray(logits), labels, num_classes, 255)
  np.testing.assert_array_equal(np.asarray(counted), expected)
  assert int(counted.sum()) == 2 * 6 * 7 - 14 - 3
  # An ignored label that is also a class index (here 2).
  counted = jax.jit(voc_metrics.confusion_sums, static_argnums=(2, 3))(
      logits, jnp.asarray(labels), num_classes, 2)
  np.testing.assert_array_equal(
      np.asarray(counted),
      _numpy_confusion(np.asarray(logits), labels, num_classes, 2))
  assert not np.asarray(counted)[2].any()
  with pytest.raises(ValueError, match='expected'):
    voc_metrics.confusion_sums(logits, labels[:, :5], num_classes)


def test_mean_iou_of_pixels_by_hand():
  # Two images of 2 x 3 pixels, 3 classes; 255 is not scored.
  labels = np.array([[[0, 0, 1], [1, 255, 2]],
                     [[0, 255, 1], [1, 1, 1]]])
  predicted = np.array([[[0, 1, 1], [1, 2, 0]],
                        [[0, 0, 1], [2, 1, 1]]])
  logits = jax.nn.one_hot(predicted, 3)
  confusion = voc_metrics.confusion_sums(logits, labels, 3)
  # Class 0: 2 right, 1 predicted as 1; 1 pixel of class 2 predicted 0.
  # Class 1: 5 right, 1 predicted as 2, 1 pixel of class 0 predicted 1.
  # Class 2: 0 right, its pixel predicted as 0.
  np.testing.assert_array_equal(np.asarray(confusion),
                                [[2, 1, 0], [0, 5, 1], [1, 0, 0]])
  scores = voc_metrics.mean_iou(confusion)
  np.testing.assert_allclose(scores['iou'], [2 / 4, 5 / 7, 0])
  assert scores['pixel_accuracy'] == pytest.approx(7 / 10)
