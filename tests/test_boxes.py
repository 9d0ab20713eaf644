"""Box geometry (``rotnet_jax/boxes.py``) on hand-worked boxes: areas and
IoU with the +1 convention, the Fast R-CNN box coder (numpy and inside
``jax.jit``), clipping, NMS and the annotation check."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rotnet_jax import boxes
from rotnet_jax.errors import InputError


def _random_boxes(rng, n):
  """``[n, 4]`` float boxes of 10 to 200 pixels a side, anywhere in a
  500-pixel square (sizes within the factor 1000 / 16 decode allows)."""
  corner = rng.uniform(0, 300, (n, 2))
  size = rng.uniform(10, 200, (n, 2))
  return np.concatenate([corner, corner + size - 1], axis=1)


def test_areas_count_pixels_inclusively():
  np.testing.assert_array_equal(
      boxes.areas(np.array([[0, 0, 9, 9], [3, 3, 3, 3], [0, 0, 4, 1]])),
      [100, 1, 10])
  np.testing.assert_array_equal(
      boxes.areas(jnp.array([[0.0, 0.0, 9.0, 9.0]]), xp=jnp), [100.0])


def test_iou_by_hand():
  a = np.array([[0, 0, 9, 9]])
  b = np.array([[5, 5, 14, 14],  # 5x5 common: 25 / (100 + 100 - 25).
                [9, 9, 12, 12],  # One common pixel: 1 / (100 + 16 - 1).
                [10, 0, 12, 9],  # Touching edges, no pixel in common.
                [0, 0, 9, 9],  # The same box.
                [2, 2, 4, 4]])  # Inside: 9 / 100.
  np.testing.assert_allclose(boxes.iou(a, b),
                             [[25 / 175, 1 / 115, 0, 1, 9 / 100]])
  assert boxes.iou(a, b).shape == (1, 5)
  assert boxes.iou(b, a).shape == (5, 1)
  assert boxes.iou(np.zeros((0, 4)), b).shape == (0, 5)
  with pytest.raises(ValueError, match=r'expected \[N, 4\]'):
    boxes.iou(np.zeros(4), b)


def test_encode_by_hand():
  # Proposal: 10x10 pixels, centre (5, 5). Target: 20x10 at (2, 4), centre
  # (2 + 10, 4 + 5) = (12, 9).
  deltas = boxes.encode(np.array([0.0, 0, 9, 9]), np.array([2.0, 4, 21, 13]))
  # dx = (12 - 5) / 10 / 0.1, dy = (9 - 5) / 10 / 0.1, dw = log 2 / 0.2.
  np.testing.assert_allclose(deltas, [7.0, 4.0, np.log(2) / 0.2, 0.0],
                             atol=1e-12)
  # Without the divisors.
  np.testing.assert_allclose(
      boxes.encode(np.array([0.0, 0, 9, 9]), np.array([2.0, 4, 21, 13]),
                   stds=(1, 1, 1, 1)), [0.7, 0.4, np.log(2), 0.0],
      atol=1e-12)
  # The same box: no move.
  np.testing.assert_allclose(boxes.encode(np.array([3.0, 4, 3, 4]),
                                          np.array([3.0, 4, 3, 4])),
                             np.zeros(4))


def test_decode_inverts_encode_on_random_boxes():
  rng = np.random.default_rng(0)
  proposals, targets = _random_boxes(rng, 200), _random_boxes(rng, 200)
  deltas = boxes.encode(proposals, targets)
  assert deltas.shape == (200, 4)
  np.testing.assert_allclose(boxes.decode(proposals, deltas), targets,
                             rtol=1e-12, atol=1e-9)
  # Leading axes broadcast: one set of proposals for 3 images.
  np.testing.assert_allclose(
      boxes.decode(proposals, np.stack([deltas] * 3)),
      np.stack([targets] * 3), atol=1e-9)


def test_the_coder_under_jit_matches_numpy():
  rng = np.random.default_rng(1)
  proposals, targets = _random_boxes(rng, 64), _random_boxes(rng, 64)

  @jax.jit
  def round_trip(p, g):
    deltas = boxes.encode(p, g, xp=jnp)
    return deltas, boxes.decode(p, deltas, xp=jnp)

  deltas, decoded = round_trip(jnp.asarray(proposals, jnp.float32),
                               jnp.asarray(targets, jnp.float32))
  assert deltas.dtype == decoded.dtype == jnp.float32
  np.testing.assert_allclose(deltas, boxes.encode(proposals, targets),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(decoded, targets, rtol=1e-5, atol=1e-5)


def test_decode_limits_the_scale_so_nothing_overflows():
  # A 16-pixel proposal centred at 8; dw = 1e4 would overflow exp. The
  # scale stops at 1000 / 16: a 1000-pixel box about the same centre.
  decoded = boxes.decode(np.array([0.0, 0, 15, 15]),
                         np.array([0.0, 0, 1e4, 1e4]))
  np.testing.assert_allclose(decoded, [-492, -492, 507, 507])
  decoded = boxes.decode(jnp.array([0.0, 0, 15, 15]),
                         jnp.array([0.0, 0, 1e4, -1e4]), xp=jnp)
  assert np.isfinite(np.asarray(decoded)).all()


def test_clip_by_hand_and_per_image():
  inside = np.array([[1.0, 2, 3, 4]])
  np.testing.assert_array_equal(boxes.clip(inside, 10, 20), inside)
  # width 20, height 10: x into [0, 19], y into [0, 9].
  np.testing.assert_array_equal(
      boxes.clip(np.array([[-5.0, -1, 25, 12]]), 10, 20), [[0, 0, 19, 9]])
  # Two images of one box each: 10x20 and 30x5 (height x width).
  both = np.array([[[-5.0, -1, 25, 12]], [[-5.0, -1, 25, 12]]])
  heights, widths = np.array([[10], [30]]), np.array([[20], [5]])
  expected = [[[0, 0, 19, 9]], [[0, 0, 4, 12]]]
  np.testing.assert_array_equal(boxes.clip(both, heights, widths), expected)
  clipped = jax.jit(lambda b, h, w: boxes.clip(b, h, w, xp=jnp))(
      jnp.asarray(both, jnp.float32), heights, widths)
  assert clipped.dtype == jnp.float32
  np.testing.assert_array_equal(clipped, expected)


# Three boxes: B covers A but for one more row (IoU 100/110), C overlaps A
# by 25/175 = 1/7.
A, B, C = [0, 0, 9, 9], [0, 0, 9, 10], [5, 5, 14, 14]


def test_nms_by_hand():
  three, scores = np.array([A, B, C], np.float64), np.array([0.9, 0.8, 0.7])
  kept = boxes.nms(three, scores, 0.5)
  assert kept.dtype == np.int64
  np.testing.assert_array_equal(kept, [0, 2])
  # At exactly the threshold a box is kept; above it, suppressed.
  np.testing.assert_array_equal(boxes.nms(three, scores, 25 / 175), [0, 2])
  np.testing.assert_array_equal(boxes.nms(three, scores, 0.1), [0])
  # B best: it suppresses A; C (IoU 30/180 with B) stays.
  np.testing.assert_array_equal(boxes.nms(three, [0.5, 0.9, 0.7], 0.5),
                                [1, 2])
  # Best score first.
  np.testing.assert_array_equal(boxes.nms(three, [0.1, 0.2, 0.3], 0.95),
                                [2, 1, 0])
  assert boxes.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_nms_takes_equal_scores_in_index_order():
  # Index 1 and 2 are the same box with the same score: the first stays.
  tied = np.array([[50.0, 50, 60, 60], C, C])
  np.testing.assert_array_equal(boxes.nms(tied, [0.5, 0.5, 0.5], 0.5),
                                [0, 1])
  np.testing.assert_array_equal(boxes.nms(tied, [0.4, 0.5, 0.5], 0.5),
                                [1, 0])


def test_check_boxes_accepts_boxes_inside_the_image():
  boxes.check_boxes(np.array([0, 0, 19, 9]), 10, 20, 'x')
  boxes.check_boxes(np.array([[3, 3, 3, 3], [0, 0, 19, 9]]), 10, 20, 'x')
  boxes.check_boxes(np.zeros((0, 4)), 10, 20, 'x')


@pytest.mark.parametrize('box, problem', [
    ([5, 0, 4, 9], r'\(5, 0, 4, 9\) is empty'),
    ([0, 3, 19, 2], r'\(0, 3, 19, 2\) is empty'),
    ([0, 0, 20, 9], r'\(0, 0, 20, 9\) lies outside the image'),
    ([0, 0, 19, 10], r'lies outside the image'),
    ([-1, 0, 5, 5], r'\(-1, 0, 5, 5\) lies outside the image'),
    ([0, np.nan, 5, 5], r'\(0, nan, 5, 5\) is not finite'),
])
def test_check_boxes_names_the_box_and_what_is_valid(box, problem):
  what = 'annotation file 000005.xml: object 3'
  with pytest.raises(InputError) as error:
    boxes.check_boxes(np.array(box, np.float64), 10, 20, what)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(what + ': ')
  assert re.search(problem, message), message
  assert '0 <= x1 <= x2 <= 19' in message
  assert '0 <= y1 <= y2 <= 9' in message
  assert '20x10 (width x height)' in message


def test_check_boxes_names_the_first_bad_box_of_several():
  with pytest.raises(InputError, match=r'^f\.xml: box 2: .* = '
                     r'\(0, 0, 30, 5\) lies outside'):
    boxes.check_boxes(np.array([[0, 0, 5, 5], [1, 1, 2, 2], [0, 0, 30, 5],
                                [4, 4, 3, 3]]), 10, 20, 'f.xml')
