"""Box geometry for detection: areas, IoU, the Fast R-CNN box coder,
clipping, non-maximum suppression and a check of annotated boxes.

Convention: a box is ``(x1, y1, x2, y2)`` on the last axis of a float
array ``[..., 4]``, in 0-based pixel indices, both corners inclusive, so a
box's width is ``x2 - x1 + 1`` and its height ``y2 - y1 + 1`` (a one-pixel
box has ``x1 == x2``). This is Fast R-CNN's and the VOC devkit's
convention; VOC's XML annotations are 1-based, and their readers subtract
1 from every coordinate. A box inside an image of ``height x width``
pixels lies in ``[0, width - 1] x [0, height - 1]``.

:func:`areas`, :func:`encode`, :func:`decode` and :func:`clip` take the
array module ``xp``: numpy by default, ``jax.numpy`` inside ``jax.jit``
(they use only operations both have, and write nothing in place).
:func:`iou`, :func:`nms` and :func:`check_boxes` are numpy only (host side:
evaluation, proposals, annotation files).
"""

import numpy as np

from rotnet_jax.errors import InputError

# The regression targets (dx, dy, dw, dh) are divided by these, so each has
# about unit spread: py-faster-rcnn's fixed values (Fast R-CNN itself
# measured per-class means and deviations on its training set).
BOX_STDS = (0.1, 0.1, 0.2, 0.2)
# The largest log-scale factor decode applies to a width or height. exp of
# a large predicted dw (an untrained or diverging regressor) overflows to
# inf, and the box's corners then become inf - inf = NaN, which clipping
# cannot repair and which poisons NMS. A 16-pixel proposal may still grow
# to 1000 pixels, more than any VOC image spans.
_MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


def _sizes(boxes):
  """Widths, heights and centres ``(w, h, cx, cy)``, each ``[...]``."""
  widths = boxes[..., 2] - boxes[..., 0] + 1.0
  heights = boxes[..., 3] - boxes[..., 1] + 1.0
  return (widths, heights, boxes[..., 0] + 0.5 * widths,
          boxes[..., 1] + 0.5 * heights)


def areas(boxes, xp=np):
  """The number of pixels of each box.

  Args:
    boxes: ``[..., 4]`` boxes (module docstring).
    xp: the array module (numpy or jax.numpy).

  Returns:
    ``[...]``: ``(x2 - x1 + 1) * (y2 - y1 + 1)``, not clamped (an empty
    box gives zero or a negative number).
  """
  boxes = xp.asarray(boxes)
  return (boxes[..., 2] - boxes[..., 0] + 1) * (
      boxes[..., 3] - boxes[..., 1] + 1)


def _check_shape(boxes: np.ndarray, name: str) -> None:
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'{name} of shape {boxes.shape}: expected [N, 4]')


def iou(a, b) -> np.ndarray:
  """Intersection over union of every box of `a` with every box of `b`.

  Args:
    a: ``[N, 4]`` boxes.
    b: ``[M, 4]`` boxes.

  Returns:
    ``float64 [N, M]``: the pixels both boxes cover over the pixels either
    covers (+1 convention, as the VOC devkit's ``VOCevaldet``); 0 where
    the boxes do not overlap.

  Raises:
    ValueError: an argument that is not ``[N, 4]``.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  _check_shape(a, 'a')
  _check_shape(b, 'b')
  return pairwise_iou(a, b)


def pairwise_iou(a, b, xp=np):
  """:func:`iou` of batches, without checks: ``[..., N, 4]`` and ``[...,
  M, 4]`` give ``[..., N, M]``; `xp` as for :func:`encode` (the jitted
  NMS passes ``jax.numpy``)."""
  a, b = a[..., :, None, :], b[..., None, :, :]
  inter_w = xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0],
                                                          b[..., 0]) + 1
  inter_h = xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1],
                                                          b[..., 1]) + 1
  # The devkit only divides when both sides of the intersection are
  # positive; two negative sides would make a positive product.
  overlap = (inter_w > 0) & (inter_h > 0)
  inter = xp.where(overlap, inter_w * inter_h, 0)
  union = areas(a, xp) + areas(b, xp) - inter
  scored = overlap & (union > 0)
  return xp.where(scored, inter / xp.where(scored, union, 1), 0.0)


def encode(proposals, targets, stds=BOX_STDS, xp=np):
  """Fast R-CNN's regression targets that move `proposals` onto `targets`.

  Args:
    proposals: ``[..., 4]`` boxes.
    targets: ``[..., 4]`` boxes, broadcast with `proposals`.
    stds: the four divisors of ``(dx, dy, dw, dh)``.
    xp: the array module (numpy or jax.numpy).

  Returns:
    ``[..., 4]`` deltas ``(dx, dy, dw, dh)``: ``dx = (gx - px) / pw``,
    ``dy = (gy - py) / ph`` between the centres (``cx = x1 + 0.5 * w``),
    ``dw = log(gw / pw)``, ``dh = log(gh / ph)``, each divided by its
    entry of `stds`. :func:`decode` is the inverse.
  """
  proposals = xp.asarray(proposals)
  targets = xp.asarray(targets)
  pw, ph, px, py = _sizes(proposals)
  gw, gh, gx, gy = _sizes(targets)
  return xp.stack([(gx - px) / pw / stds[0], (gy - py) / ph / stds[1],
                   xp.log(gw / pw) / stds[2], xp.log(gh / ph) / stds[3]],
                  axis=-1)


def decode(proposals, deltas, stds=BOX_STDS, xp=np):
  """The boxes that `deltas` (as :func:`encode` gives them) make of
  `proposals`.

  Args:
    proposals: ``[..., 4]`` boxes.
    deltas: ``[..., 4]`` ``(dx, dy, dw, dh)``, broadcast with `proposals`.
    stds: the four factors of ``(dx, dy, dw, dh)`` (those of encode).
    xp: the array module (numpy or jax.numpy).

  Returns:
    ``[..., 4]`` boxes: centre ``px + dx * pw``, width ``pw * exp(dw)``
    (likewise in y), so ``decode(p, encode(p, g)) == g`` up to rounding.
    The log-scale factors ``dw``, ``dh`` are first limited to
    ``log(1000 / 16)``, so no corner overflows. Not clipped to the image
    (:func:`clip`).
  """
  proposals = xp.asarray(proposals)
  deltas = xp.asarray(deltas)
  pw, ph, px, py = _sizes(proposals)
  cx = px + deltas[..., 0] * stds[0] * pw
  cy = py + deltas[..., 1] * stds[1] * ph
  w = pw * xp.exp(xp.minimum(deltas[..., 2] * stds[2], _MAX_LOG_SCALE))
  h = ph * xp.exp(xp.minimum(deltas[..., 3] * stds[3], _MAX_LOG_SCALE))
  # The inverse of _sizes: x1 = cx - w / 2 and x2 = x1 + w - 1.
  return xp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - 1.0,
                   cy + 0.5 * h - 1.0], axis=-1)


def clip(boxes, height, width, xp=np):
  """`boxes` moved inside their image, corner by corner.

  Args:
    boxes: ``[..., 4]`` boxes.
    height: the image's height in pixels: a number, or an array broadcast
      with ``boxes.shape[:-1]`` (e.g. ``[B, 1]`` for boxes ``[B, N, 4]``,
      one height per image).
    width: the image's width, as `height`.
    xp: the array module (numpy or jax.numpy).

  Returns:
    ``[..., 4]`` of `boxes`' dtype: x1 and x2 limited to
    ``[0, width - 1]``, y1 and y2 to ``[0, height - 1]``.
  """
  boxes = xp.asarray(boxes)
  x_max = xp.asarray(width) - 1
  y_max = xp.asarray(height) - 1

  def limit(values, most):
    return xp.minimum(xp.maximum(values, 0), most)

  clipped = xp.stack([limit(boxes[..., 0], x_max),
                      limit(boxes[..., 1], y_max),
                      limit(boxes[..., 2], x_max),
                      limit(boxes[..., 3], y_max)], axis=-1)
  return clipped.astype(boxes.dtype)


def nms(boxes, scores, threshold: float) -> np.ndarray:
  """Greedy non-maximum suppression, as Fast R-CNN's.

  The best-scored box is kept and every remaining box whose IoU with it
  is more than `threshold` is dropped, then the same with the best box
  left, until none is. Equal scores are taken in index order.

  Args:
    boxes: ``[N, 4]`` boxes.
    scores: ``[N]``, higher is better.
    threshold: the IoU above which a box is suppressed (one at exactly
      `threshold` is kept).

  Returns:
    ``int64 [K]``: the indices of the boxes kept, best score first.

  Raises:
    ValueError: `boxes` not ``[N, 4]`` or `scores` not ``[N]``.
  """
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores)
  _check_shape(boxes, 'boxes')
  if scores.shape != boxes.shape[:1]:
    raise ValueError(f'scores of shape {scores.shape}: expected '
                     f'[{len(boxes)}], one per box')
  order = np.argsort(-scores, kind='stable')
  kept = []
  while len(order):
    best, rest = order[0], order[1:]
    kept.append(best)
    overlaps = iou(boxes[best:best + 1], boxes[rest])[0]
    order = rest[overlaps <= threshold]
  return np.asarray(kept, np.int64)


def check_boxes(boxes, height: int, width: int, what: str) -> None:
  """Raises InputError unless every box is finite, not empty and inside
  its image.

  Args:
    boxes: ``[4]`` (one box) or ``[N, 4]``.
    height: the image's height in pixels.
    width: the image's width in pixels.
    what: names the boxes in the message (e.g. ``'annotation file X:
      object 3'``); with ``[N, 4]`` the message adds the box's index.

  Raises:
    InputError: one line naming `what`, the first bad box (by index),
      what is wrong with it, the image size and the valid range. A box is
      bad when a coordinate is NaN or infinite, when ``x2 < x1`` or ``y2
      < y1``, or when a corner lies outside ``[0, width - 1] x [0, height
      - 1]``.
  """
  boxes = np.asarray(boxes, np.float64)
  single = boxes.ndim == 1
  if single:
    boxes = boxes[None]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise InputError(f'{what}: boxes of shape {boxes.shape}: expected '
                     '[4] or [N, 4] (x1, y1, x2, y2)')
  finite = np.isfinite(boxes).all(1)
  ordered = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
  inside = ((boxes[:, :2] >= 0).all(1) & (boxes[:, 2] <= width - 1) &
            (boxes[:, 3] <= height - 1))
  bad = ~(finite & ordered & inside)
  if not bad.any():
    return
  index = int(np.argmax(bad))
  if not finite[index]:
    problem = 'is not finite'
  elif not ordered[index]:
    problem = 'is empty (x2 < x1 or y2 < y1)'
  else:
    problem = 'lies outside the image'
  box = ', '.join(f'{v:g}' for v in boxes[index])
  name = what if single else f'{what}: box {index}'
  raise InputError(f'{name}: (x1, y1, x2, y2) = ({box}) {problem}: '
                   f'expected finite 0 <= x1 <= x2 <= {width - 1} and '
                   f'0 <= y1 <= y2 <= {height - 1} (0-based pixels, '
                   f'inclusive) in an image of {width}x{height} (width x '
                   'height)')
