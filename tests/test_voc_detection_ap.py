"""The VOC2007 detection AP (``voc_metrics.detection_average_precision``)
on hand-worked cases, and against a loop-by-loop transcription of the
devkit's ``VOCevaldet`` on random detections."""

import fractions
import math

import numpy as np
import pytest

from rotnet_jax.errors import InputError
from rotnet_jax.training import voc_metrics

# Boxes (x1, y1, x2, y2), 0-based, inclusive: A and B are 10x10 squares
# side by side, far from FAR.
A, B, FAR = [0, 0, 9, 9], [0, 10, 9, 19], [100, 100, 109, 109]


def _gt(*objects):
  """One image's ground truth from ``(box, label, difficult)`` triples."""
  if not objects:
    return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)
  boxes, labels, difficult = zip(*objects)
  return (np.array(boxes, np.float64), np.array(labels, np.int64),
          np.array(difficult, bool))


def _dets(*detections):
  """One class's detections from ``(image, score, box)`` triples."""
  if not detections:
    return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
  images, scores, boxes = zip(*detections)
  return (np.array(images, np.int64), np.array(scores, np.float64),
          np.array(boxes, np.float64))


def _one_class(detections, ground_truth, **kwargs):
  """``(11-point AP, all-points AP)`` of class 0 of a one-class problem."""
  result = voc_metrics.detection_average_precision(
      [_dets(*detections)], [_gt(*g) for g in ground_truth], num_classes=1,
      **kwargs)
  return float(result['AP'][0]), float(result['AP_all_points'][0])


def test_perfect_detections_have_ap_1():
  ground = [[(A, 0, False), (B, 0, False)], [(FAR, 0, False)]]
  detections = [(0, 0.9, A), (1, 0.8, FAR), (0, 0.7, B)]
  assert _one_class(detections, ground) == (1.0, 1.0)


def test_a_duplicate_is_a_false_positive():
  # One box in each of two images; A is found twice. In score order: TP,
  # FP (A already detected), TP. (recall, precision): (1/2, 1), (1/2, 1/2),
  # (1, 2/3). 11-point: levels 0 .. .5 (6) reach precision 1, .6 .. 1 (5)
  # only 2/3: (6 + 5 * 2/3) / 11 = 28/33. All points: 1/2 * 1 + 1/2 * 2/3.
  ground = [[(A, 0, False)], [(A, 0, False)]]
  detections = [(0, 0.9, A), (0, 0.8, [0, 0, 9, 8]), (1, 0.7, A)]
  eleven, all_points = _one_class(detections, ground)
  assert eleven == pytest.approx(28 / 33, abs=1e-12)
  assert all_points == pytest.approx(5 / 6, abs=1e-12)


def test_the_best_overlap_decides_even_when_that_box_is_taken():
  # (0, 2, 9, 16) overlaps A by 80/170 and B by 70/180, both above 0.3: it
  # goes to A, detected already, so it is a false positive although B is
  # free. (1/2, 1), (1/2, 1/2): 6 levels of 11 reach precision 1.
  ground = [[(A, 0, False), (B, 0, False)]]
  detections = [(0, 0.9, A), (0, 0.8, [0, 2, 9, 16])]
  eleven, all_points = _one_class(detections, ground, iou_threshold=0.3)
  assert eleven == pytest.approx(6 / 11, abs=1e-12)
  assert all_points == pytest.approx(1 / 2, abs=1e-12)


def test_an_overlap_of_exactly_the_threshold_matches():
  # (0, 0, 9, 4) is half of A: IoU 50/100 = 0.5.
  assert _one_class([(0, 0.9, [0, 0, 9, 4])], [[(A, 0, False)]]) == (1, 1)
  assert _one_class([(0, 0.9, [0, 0, 9, 3])], [[(A, 0, False)]]) == (0, 0)


def test_a_match_of_a_difficult_box_is_ignored():
  # FAR is difficult: its detection (best score) is neither true nor false
  # positive, and FAR is not among the positives: the one on A is then
  # at precision 1 and recall 1; the later miss changes nothing.
  ground = [[(A, 0, False), (FAR, 0, True)]]
  detections = [(0, 0.9, FAR), (0, 0.8, A), (0, 0.7, B)]
  assert _one_class(detections, ground) == (1.0, 1.0)
  # Its duplicates too: every match of a difficult box is ignored.
  detections = [(0, 0.9, FAR), (0, 0.85, FAR), (0, 0.8, A)]
  assert _one_class(detections, ground) == (1.0, 1.0)
  # Found only the difficult box: recall 0.
  assert _one_class([(0, 0.9, FAR)], ground) == (0.0, 0.0)


def test_precision_is_the_best_at_that_recall_or_more():
  # Three images of one box each; in score order TP, FP, FP, TP, TP:
  # (1/3, 1), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2), (1, 3/5). Levels 0 ..
  # .3 (4) reach 1; from .4 (7 levels) the best is 3/5, not the 1/2 where
  # recall 2/3 is first reached.
  ground = [[(A, 0, False)], [(A, 0, False)], [(A, 0, False)]]
  detections = [(0, 0.9, A), (0, 0.8, FAR), (1, 0.7, FAR), (1, 0.6, A),
                (2, 0.5, A)]
  eleven, all_points = _one_class(detections, ground)
  assert eleven == pytest.approx((4 + 7 * 3 / 5) / 11, abs=1e-12)
  assert all_points == pytest.approx((1 + 3 / 5 + 3 / 5) / 3, abs=1e-12)


def test_a_detection_in_another_image_does_not_match():
  # A is in image 0 only; the best detection is A's box in image 1: a
  # false positive. (recall, precision): (0, 0), (1, 1/2): every level's
  # best is 1/2.
  ground = [[(A, 0, False)], []]
  detections = [(1, 0.9, A), (0, 0.8, A)]
  eleven, all_points = _one_class(detections, ground)
  assert eleven == pytest.approx(1 / 2, abs=1e-12)
  assert all_points == pytest.approx(1 / 2, abs=1e-12)
  # Image 1 with a box elsewhere: still no match, and recall 1/2 at most.
  ground = [[(A, 0, False)], [(B, 0, False)]]
  eleven, all_points = _one_class(detections, ground)
  assert eleven == pytest.approx(6 / 2 / 11, abs=1e-12)
  assert all_points == pytest.approx(1 / 4, abs=1e-12)


def test_classes_without_detections_or_boxes():
  ground = [_gt((A, 0, False), (B, 1, False), (FAR, 2, True)),
            _gt((FAR, 1, False))]
  detections = [_dets((0, 0.9, A)),  # Class 0: perfect.
                _dets(),  # Class 1: boxes, no detection: AP 0.
                _dets((0, 0.5, FAR)),  # Class 2: only a difficult box.
                _dets((1, 0.5, A))]  # Class 3: no box at all.
  result = voc_metrics.detection_average_precision(detections, ground,
                                                   num_classes=4)
  for name in ('AP', 'AP_all_points'):
    assert result[name].dtype == np.float64
    np.testing.assert_array_equal(result[name], [1, 0, np.nan, np.nan])
  assert result['mAP'] == result['mAP_all_points'] == 0.5
  # Labels of another class never match.
  result = voc_metrics.detection_average_precision(
      [_dets(), _dets((0, 0.9, A))], [_gt((A, 0, False))], num_classes=2)
  np.testing.assert_array_equal(result['AP'], [0, np.nan])
  assert result['mAP'] == 0
  result = voc_metrics.detection_average_precision([_dets()], [_gt()],
                                                   num_classes=1)
  assert math.isnan(result['mAP'])


@pytest.mark.parametrize('change, message', [
    (lambda d, g: ([(np.array([0, 2]), np.ones(2), np.zeros((2, 4)))], g),
     r'detections of class 0: image index 2 out of range: expected 0\.\.1'),
    (lambda d, g: ([(np.array([-1]), np.ones(1), np.zeros((1, 4)))], g),
     r'image index -1 out of range'),
    (lambda d, g: ([(np.array([0.0]), np.ones(1), np.zeros((1, 4)))], g),
     r'image indices of dtype float64: expected integers'),
    (lambda d, g: ([(np.array([0]), np.ones(2), np.zeros((1, 4)))], g),
     r'1 image indices, 2 scores, 1 boxes'),
    (lambda d, g: ([(np.array([0]), [np.nan], np.zeros((1, 4)))], g),
     r'NaN or infinite'),
    (lambda d, g: (d * 2, g), r'detections of 2 classes: expected one'),
    (lambda d, g: (d, [_gt((A, 1, False)), g[1]]),
     r'ground truth of image 0: labels \[1\]: expected integers in 0\.\.0'),
])
def test_bad_input_is_named(change, message):
  detections = [_dets((0, 0.9, A))]
  ground = [_gt((A, 0, False)), _gt()]
  with pytest.raises(InputError, match=message):
    voc_metrics.detection_average_precision(*change(detections, ground),
                                            num_classes=1)
  with pytest.raises(InputError, match=r'iou_threshold 0: expected'):
    voc_metrics.detection_average_precision(detections, ground,
                                            num_classes=1, iou_threshold=0)


def _reference_ap(detections, ground_truth, c, threshold):
  """VOCevaldet for class `c`, one detection and one box at a time, in
  plain Python (the test's own reading of the devkit): ``(11-point,
  all-points)``; NaN without a non-difficult box."""
  gt = []  # Per image: [box, difficult, detected] of class c.
  npos = 0
  for boxes, labels, difficult in ground_truth:
    gt.append([[list(map(float, boxes[j])), bool(difficult[j]), False]
               for j in range(len(labels)) if labels[j] == c])
    npos += sum(1 for j in range(len(labels))
                if labels[j] == c and not difficult[j])
  if npos == 0:
    return math.nan, math.nan
  images, scores, boxes = detections[c]
  order = sorted(range(len(scores)), key=lambda d: -scores[d])  # Stable.
  tp, fp = [], []
  for d in order:
    bb = list(map(float, boxes[d]))
    ovmax, jmax = -math.inf, None
    for j, (bbgt, _, _) in enumerate(gt[images[d]]):
      iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
      ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
      if iw > 0 and ih > 0:
        ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) +
              (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
        ov = iw * ih / ua
        if ov > ovmax:
          ovmax, jmax = ov, j
    hit, fa = 0, 0
    if ovmax >= threshold:
      entry = gt[images[d]][jmax]
      if not entry[1]:
        if not entry[2]:
          hit = 1
          entry[2] = True
        else:
          fa = 1
    else:
      fa = 1
    tp.append(hit)
    fp.append(fa)
  rec, prec, ctp, cfp = [], [], 0, 0
  for hit, fa in zip(tp, fp):
    ctp, cfp = ctp + hit, cfp + fa
    rec.append(fractions.Fraction(ctp, npos))
    prec.append(ctp / (ctp + cfp) if ctp + cfp else math.nan)
  ap = 0.0
  for k in range(11):
    # max ignores NaN (MATLAB's), and an empty max is 0.
    p = [q for r, q in zip(rec, prec)
         if r >= fractions.Fraction(k, 10) and not math.isnan(q)]
    ap += (max(p) if p else 0.0) / 11
  # VOCap: pad, the envelope from the right, the area where recall moves.
  mrec = [0.0] + [float(r) for r in rec] + [1.0]
  mpre = [0.0] + prec + [0.0]
  for i in range(len(mpre) - 2, -1, -1):
    mpre[i] = mpre[i + 1] if math.isnan(mpre[i]) else max(mpre[i],
                                                             mpre[i + 1])
  area = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec))
             if mrec[i] != mrec[i - 1])
  return ap, area


def _random_problem(rng, num_images=6, num_classes=3):
  """Small images crowded with boxes, and detections near them: jittered
  boxes, duplicates, far-off ones, scores on a coarse grid (ties)."""

  def box():
    x, y = rng.integers(0, 40, 2)
    w, h = rng.integers(3, 20, 2)
    return [x, y, x + w - 1, y + h - 1]

  ground = []
  for _ in range(num_images):
    count = int(rng.integers(0, 5))
    ground.append((np.array([box() for _ in range(count)],
                            np.float64).reshape(-1, 4),
                   rng.integers(0, num_classes, count),
                   rng.random(count) < 0.25))
  detections = []
  for c in range(num_classes):
    # The class's boxes, as (image, box).
    own = [(i, b) for i, (boxes, labels, _) in enumerate(ground)
           for b, label in zip(boxes, labels) if label == c]
    images, boxes = [], []
    for _ in range(int(rng.integers(0, 25))):
      if own and rng.random() < 0.8:
        image, near = own[rng.integers(len(own))]
        boxes.append(near + rng.integers(-2, 3, 4))
        if rng.random() < 0.1:  # The right box in the wrong image.
          image = int(rng.integers(num_images))
      else:
        image = int(rng.integers(num_images))
        boxes.append(box())
      images.append(image)
    count = len(images)
    detections.append((np.array(images, np.int64),
                       rng.integers(0, 6, count) / 5,
                       np.array(boxes, np.float64).reshape(-1, 4)))
  return detections, ground


@pytest.mark.parametrize('seed', range(20))
def test_matches_a_transcription_of_the_devkit(seed):
  rng = np.random.default_rng(seed)
  detections, ground = _random_problem(rng)
  threshold = (0.5, 0.3, 0.7)[seed % 3]
  result = voc_metrics.detection_average_precision(
      detections, ground, num_classes=3, iou_threshold=threshold)
  for c in range(3):
    eleven, all_points = _reference_ap(detections, ground, c, threshold)
    np.testing.assert_allclose(
        [result['AP'][c], result['AP_all_points'][c]], [eleven, all_points],
        rtol=0, atol=1e-12, err_msg=f'class {c}')
