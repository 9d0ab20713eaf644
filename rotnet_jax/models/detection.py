"""Fast R-CNN (Girshick, ICCV 2015) on the pretrained AlexNet.

The paper's headline transfer (Table 7, detection): its AlexNet RotNet
fine-tuned as a Fast R-CNN detector on PASCAL VOC2007. The network:

* conv1..conv5 of the AlexNet on the whole (rescaled) image; pool5 is
  replaced by
* RoI max pooling (:func:`roi_max_pool`) of each region of interest on the
  conv5 map into ``side x side`` bins, ``side`` the pool5 side the fc6
  matrix was trained on (6 at the official 224 pixels), exactly as Fast
  R-CNN's ``ROIPooling`` layer (spatial scale 1/16, corners rounded half
  away from zero as C's ``round``, bins of ``floor``/``ceil`` edges
  computed exactly, an empty bin gives 0);
* the pretrained fc6 and fc7 on each region;
* two new layers on fc7: a 21-way classifier (the 20 VOC classes and the
  background, weights N(0, 0.01)) and class-specific box regression (4
  deltas per class, N(0, 0.001)), zero biases, as Fast R-CNN draws them.

BatchNorm: the RotNet AlexNet has BatchNorm after every layer. With two
images per step the batch statistics would be those of two images (and
of padding regions), so every BatchNorm here applies its pretrained
running statistics, an affine map whose scale and offset still train:
what a BatchNorm network becomes when it is folded into Caffe's layers
for Fast R-CNN. Nothing updates the running statistics.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rotnet_jax import boxes as boxes_lib
from rotnet_jax.models import alexnet
from rotnet_jax.models import transfer

# VOC's 20 classes and the background (class 0).
NUM_DETECTION_CLASSES = 21
# conv5's stride in input pixels (conv1 /4, pool1 /2, pool2 /2), the
# spatial scale of Fast R-CNN's RoI pooling for AlexNet-like networks.
FEATURE_STRIDE = 16


def conv5_map(model: alexnet.AlexNet, x: jax.Array, *,
              frozen_up_to: str = '') -> jax.Array:
  """conv1..conv5 of AlexNet on `x` (no pool5), BatchNorm in inference mode.

  Args:
    model: the AlexNet.
    x: normalised images ``[B, H, W, 3]``.
    frozen_up_to: the last block that does not train ('' for none): the
      gradient stops after it.

  Returns:
    The conv5 map ``[B, h, w, C]`` (stride :data:`FEATURE_STRIDE`).
  """
  transfer.frozen_blocks(frozen_up_to)  # Checks the name.
  for name, *_, pool in alexnet.CONV_LAYERS:
    x = getattr(model, name)(x, train=False)
    if name == frozen_up_to:
      x = jax.lax.stop_gradient(x)
    if pool and name != 'conv5':
      x = alexnet.max_pool_3x3_s2(x)
  return x


def roi_bins(rois: jax.Array, side: int, spatial_scale: float,
             height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """The feature-map cells of each RoI's bins, as Fast R-CNN computes them.

  Args:
    rois: ``[R, 4]`` boxes ``(x1, y1, x2, y2)`` in input pixels (0-based,
      inclusive).
    side: bins per side.
    spatial_scale: feature cells per input pixel (1/16).
    height: the feature map's height.
    width: its width.

  Returns:
    ``(start, end)``, each ``int32 [R, side, 2]``: bin ``k``'s cells along
    ``(y, x)`` are ``[start, end)``, clipped to the map (an empty bin has
    ``end <= start``).
  """
  scaled = rois * spatial_scale
  # C's round(), as Caffe's layer: halves away from zero (jnp.round takes
  # them to even, a cell off for a tenth of VOC's scaled coordinates).
  corners = (jnp.sign(scaled) * jnp.floor(jnp.abs(scaled) + 0.5)).astype(
      jnp.int32)
  begin = corners[:, 1::-1]   # (y1, x1)
  last = corners[:, :1:-1]    # (y2, x2)
  # A RoI covers at least one cell (Fast R-CNN: max(end - start + 1, 1)).
  size = jnp.maximum(last - begin + 1, 1)[:, None, :]
  k = jnp.arange(side, dtype=jnp.int32)[None, :, None]
  # floor(k * size / side) and ceil((k + 1) * size / side) in integers:
  # Caffe's float32 product can land a cell off where it is a whole number.
  start = (k * size) // side + begin[:, None, :]
  end = -((-(k + 1) * size) // side) + begin[:, None, :]
  limit = jnp.asarray([height, width], jnp.int32)
  return jnp.clip(start, 0, limit), jnp.clip(end, 0, limit)


def _range_max_table(features: jax.Array) -> jax.Array:
  """Sparse table of 2-D range maxima: ``table[a, b, y, x]`` is the max of
  ``features[y : y + 2**a, x : x + 2**b]`` (where that fits in the map).

  Any rectangle's max is then the max of 4 (overlapping) table entries, so
  RoI pooling is 4 gathers per bin instead of a masked max over the whole
  map per bin (whose gradient would hold R x bins x H x W x C values).
  """
  height, width = features.shape[:2]
  levels_y = max(1, height.bit_length())
  levels_x = max(1, width.bit_length())

  def doubled(table, axis, span):
    # max(t[i], t[i + span]); the last `span` rows repeat the edge, never
    # read by a query (a window of 2 * span fits before them).
    shifted = jnp.concatenate(
        [jax.lax.slice_in_dim(table, span, table.shape[axis], axis=axis),
         jax.lax.slice_in_dim(table, table.shape[axis] - 1,
                              table.shape[axis], axis=axis).repeat(
                                  min(span, table.shape[axis]), axis=axis)],
        axis=axis)
    shifted = jax.lax.slice_in_dim(shifted, 0, table.shape[axis], axis=axis)
    return jnp.maximum(table, shifted)

  rows = [features]
  for a in range(1, levels_y):
    rows.append(doubled(rows[-1], 0, 2 ** (a - 1)))
  table = []
  for row in rows:
    columns = [row]
    for b in range(1, levels_x):
      columns.append(doubled(columns[-1], 1, 2 ** (b - 1)))
    table.append(jnp.stack(columns))
  return jnp.stack(table)  # [levels_y, levels_x, H, W, C]


def _floor_log2(n: jax.Array) -> jax.Array:
  """``floor(log2(n))`` of positive integers, exactly (no float rounding)."""
  powers = 2 ** jnp.arange(1, 31, dtype=jnp.int32)
  return jnp.sum(n[..., None] >= powers, axis=-1).astype(jnp.int32)


def roi_max_pool(features: jax.Array, rois: jax.Array, *, side: int,
                 spatial_scale: float = 1.0 / FEATURE_STRIDE) -> jax.Array:
  """Fast R-CNN's RoI max pooling of one image's regions.

  Args:
    features: the image's feature map ``[H, W, C]``.
    rois: ``[R, 4]`` boxes ``(x1, y1, x2, y2)`` in input pixels.
    side: bins per side of the output.
    spatial_scale: feature cells per input pixel.

  Returns:
    ``[R, side, side, C]``: the max of each bin's cells, 0 for an empty
    bin (a region partly outside the map).
  """
  height, width, channels = features.shape
  start, end = roi_bins(rois, side, spatial_scale, height, width)
  table = _range_max_table(features)
  levels_x = table.shape[1]
  flat = table.reshape(-1, channels)
  extent = jnp.maximum(end - start, 1)
  level = _floor_log2(extent)                       # [R, side, 2]
  # The two overlapping windows of 2**level cells that cover [start, end).
  first = start
  second = jnp.maximum(end - 2 ** level, start)
  y_level = level[:, :, None, 0]
  x_level = level[:, None, :, 1]

  def gather(y, x):
    # An empty bin's cells may lie past the map: clipped, then zeroed below.
    y = jnp.clip(y, 0, height - 1)
    x = jnp.clip(x, 0, width - 1)
    index = (((y_level * levels_x + x_level) * height + y[:, :, None]) *
             width + x[:, None, :])
    return jnp.take(flat, index, axis=0)            # [R, side, side, C]

  pooled = jnp.maximum(
      jnp.maximum(gather(first[..., 0], first[..., 1]),
                  gather(first[..., 0], second[..., 1])),
      jnp.maximum(gather(second[..., 0], first[..., 1]),
                  gather(second[..., 0], second[..., 1])))
  empty = ((end[:, :, None, 0] <= start[:, :, None, 0]) |
           (end[:, None, :, 1] <= start[:, None, :, 1]))
  return jnp.where(empty[..., None], jnp.zeros((), pooled.dtype), pooled)


class AlexNetFastRCNN(nnx.Module):
  """AlexNet as a Fast R-CNN detector.

  Attributes:
    alexnet: the network (its pretext classifier removed).
    cls_score: the new 21-way classifier on fc7.
    bbox_pred: the new box regression on fc7, 4 deltas per class.
    side: RoI pooling bins per side (the pool5 side of the spec).
  """

  def __init__(self, spec: dict[str, Any],
               num_classes: int = NUM_DETECTION_CLASSES, *, dtype=None,
               rngs: nnx.Rngs):
    self.alexnet = alexnet.AlexNet(1, image_size=spec['image_size'],
                                   width=spec['width'], dtype=dtype,
                                   rngs=rngs)
    del self.alexnet.classifier  # No parameter that trains for nothing.
    self.side = alexnet.feature_sides(spec['image_size'])['pool5']
    fc_width = self.alexnet.fc_block.linear2.out_features
    self.cls_score = nnx.Linear(
        fc_width, num_classes, kernel_init=nnx.initializers.normal(0.01),
        bias_init=nnx.initializers.zeros, dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)
    self.bbox_pred = nnx.Linear(
        fc_width, 4 * num_classes,
        kernel_init=nnx.initializers.normal(0.001),
        bias_init=nnx.initializers.zeros, dtype=dtype,
        param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, images: jax.Array, rois: jax.Array, *,
               frozen_up_to: str = '') -> tuple[jax.Array, jax.Array]:
    """Class scores and box deltas of every region.

    Args:
      images: normalised images ``[B, H, W, 3]``.
      rois: ``[B, R, 4]`` regions in the images' pixels.
      frozen_up_to: the last block that does not train ('' for none).

    Returns:
      ``(logits, deltas)``: ``[B, R, 21]`` and ``[B, R, 21, 4]``, float32
      (float64 in a float64 run).
    """
    model = self.alexnet
    features = conv5_map(model, images, frozen_up_to=frozen_up_to)
    # Region corners in float32 at least (bf16 would move them by pixels).
    rois = rois.astype(jnp.promote_types(rois.dtype, jnp.float32))
    pooled = jax.vmap(lambda f, r: roi_max_pool(f, r, side=self.side))(
        features, rois)
    batch, regions = rois.shape[:2]
    x = pooled.reshape(batch * regions, -1)  # Row-major (h, w, c): pool5's.
    x = model.fc_block(x, train=False)
    # float32 at least: float64 runs keep their precision.
    out_dtype = jnp.promote_types(x.dtype, jnp.float32)
    logits = self.cls_score(x).astype(out_dtype)
    deltas = self.bbox_pred(x).astype(out_dtype)
    return (logits.reshape(batch, regions, -1),
            deltas.reshape(batch, regions, -1, 4))


def nms_keep(boxes: jax.Array, valid: jax.Array, threshold: float
             ) -> jax.Array:
  """Greedy non-maximum suppression of boxes sorted by falling score.

  Args:
    boxes: ``[..., K, 4]``, best first.
    valid: ``bool [..., K]``: boxes that take part.
    threshold: a box goes if its IoU with a kept, better box is above it.

  Returns:
    ``bool [..., K]``: the kept boxes (as ``boxes.nms`` keeps them).
  """
  count = boxes.shape[-2]
  overlaps = boxes_lib.pairwise_iou(boxes, boxes, xp=jnp) > threshold
  earlier = jnp.arange(count)

  def visit(i, keep):
    suppressed = jnp.any(keep & overlaps[..., :, i] & (earlier < i), axis=-1)
    return keep.at[..., i].set(valid[..., i] & ~suppressed)

  return jax.lax.fori_loop(0, count, visit, valid)


def detect(logits: jax.Array, deltas: jax.Array, rois: jax.Array,
           roi_weights: jax.Array, scale: jax.Array, size: jax.Array, *,
           per_class: int, nms_threshold: float, box_stds
           ) -> tuple[jax.Array, jax.Array]:
  """Fast R-CNN's test-time detections of a batch, in original pixels.

  Per image and class: every region's box regressed for the class and
  mapped back to the original image (divided by the resize factor,
  clipped to the image), the `per_class` best-scoring regions kept, then
  non-maximum suppression at `nms_threshold`.

  Args:
    logits: ``[B, R, 21]``.
    deltas: ``[B, R, 21, 4]``.
    rois: ``[B, R, 4]`` in the resized image's pixels.
    roi_weights: ``[B, R]``, 0 for padding regions.
    scale: ``[B]``, each image's resize factor.
    size: ``int [B, 2]``, each image's original height and width.
    per_class: detections per class and image before suppression.
    nms_threshold: the suppression's IoU threshold (Fast R-CNN: 0.3).
    box_stds: the regression targets' scale (``boxes.BOX_STDS``).

  Returns:
    ``(boxes, scores)``: ``float32 [B, 20, K, 4]`` and ``[B, 20, K]``
    (``K = min(per_class, R)``), each class's detections best first; a
    suppressed or padding one has score -1.
  """
  probabilities = jax.nn.softmax(logits, axis=-1)[..., 1:]  # [B, R, 20]
  scores = jnp.where(roi_weights[..., None] > 0, probabilities, -1.0)
  scores = jnp.swapaxes(scores, 1, 2)                          # [B, 20, R]
  count = min(per_class, scores.shape[-1])
  top_scores, top = jax.lax.top_k(scores, count)               # [B, 20, K]
  top_rois = jnp.take_along_axis(rois[:, None], top[..., None], axis=2)
  class_deltas = jnp.swapaxes(deltas[:, :, 1:], 1, 2)          # [B,20,R,4]
  top_deltas = jnp.take_along_axis(class_deltas, top[..., None], axis=2)
  decoded = boxes_lib.decode(top_rois, top_deltas, box_stds, xp=jnp)
  decoded = decoded / scale[:, None, None, None]
  height = size[:, 0, None, None].astype(decoded.dtype)
  width = size[:, 1, None, None].astype(decoded.dtype)
  decoded = boxes_lib.clip(decoded, height, width, xp=jnp)
  keep = nms_keep(decoded, top_scores >= 0, nms_threshold)
  return decoded, jnp.where(keep, top_scores, -1.0)
