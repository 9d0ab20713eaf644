"""PASCAL VOC batches, decoded and augmented on the host (NumPy and PIL).

No TensorFlow: runs on a machine without tensorflow or tfds (a split of
TFDS ``voc/2007`` is read by ``voc.open_classification`` beforehand).
Images are decoded with PIL in a thread pool (PIL releases the GIL while it
decodes and resamples), a few batches ahead of the one yielded.

Classification (a ``voc.ClassificationSplit``), the augmentation of
Krähenbühl et al.'s ``voc-classification`` (``src/train_cls.py``, the code
the RotNet paper cites for VOC classification; its crops come from the
``Transformation`` layer of their Caffe fork, branch
``transforming_fast_hdf5``), drawn by :func:`draw_window`:

* a scale ``s`` drawn *uniformly* in ``scale_range`` (``--min-scale 0.5
  --max-scale 2.0``; the layer draws ``caffe_rng_uniform(min, max)``, not
  log-uniformly). ``s`` is the side of the crop window in the original
  image's pixels over ``S`` (so the image is zoomed by ``1 / s``); the
  layer caps it so that the window fits in the image, ``s <= min(H, W) /
  S`` (the lower end drops with it when the cap is below it);
* the window placed uniformly (continuous offsets) where it lies inside
  the image, and resampled to ``S x S`` bilinearly (point sampling, as the
  layer does);
* a horizontal mirror with probability 1/2.

Because the window always lies inside the image, no pixel is ever padded
(the layer would write 0 after subtracting the mean, i.e. the mean
colour); our resampling fills 0 (black) outside the image, which the cap
never lets happen. Evaluation (``test_crops`` crops) draws windows the same
way, as ``train_cls.py`` does (the model sums the crops' scores), with
draws fixed by ``(seed, example index)``, so every evaluation sees the same
crops.

Segmentation (a ``voc.SegmentationSplit``): the image at the top-left of
an ``S x S`` canvas of zeros, its labels on a canvas of
``voc.IGNORE_LABEL`` (255), so padding is never scored. Training mirrors
image and labels together with probability 1/2 and, where the image is
larger than ``S`` (in either direction), takes a random ``S``-pixel window
in that direction (integer offsets, uniform). Evaluation keeps every image
whole: one larger than ``S`` is scaled down to fit (image bilinear, labels
nearest), so with ``S = 500`` (VOC images are at most 500 pixels a side)
every pixel is kept as it is.

Every random draw of a training example comes from (seed, epoch, position
in the epoch) alone (the position decides the example through the epoch's
order, ``shuffle.epoch_order``; an example drawn twice in a longer epoch
gets two crops), so a run resumed at ``start_step`` sees exactly the
batches of an uninterrupted epoch, and skipped steps decode nothing.

Under several processes each process builds only its own rows of every
global batch, positions ``process, process + P, ...`` of the epoch, as the
tf.data source does for image folders.
"""

import collections
import concurrent.futures
import io
import os

import jax
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from rotnet_jax import parallel
from rotnet_jax.data import shuffle
from rotnet_jax.data import voc
from rotnet_jax.data.source import HostBatches
from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line

# Batches decoded ahead of the one yielded.
PREFETCH_BATCHES = 2
_MAX_THREADS = 16
# Mixed into the seeds so training and evaluation draws never coincide
# (nor those of other sources started from the same run seed).
_TRAIN_STREAM = 0x766f6374   # 'voct'
_TEST_STREAM = 0x766f6365    # 'voce'


def draw_window(rng: np.random.Generator, height: int, width: int,
                size: int, scale_range=(0.5, 2.0)):
  """One random crop window of ``voc-classification``'s training.

  Args:
    rng: the example's generator.
    height: the image's height.
    width: the image's width.
    size: ``S``, the crop's side.
    scale_range: ``(low, high)`` of the window's side over `size`.

  Returns:
    ``(top, left, side, mirror)``: the window ``[top, top + side) x [left,
    left + side)`` in the image's continuous pixel coordinates and whether
    to mirror it.
  """
  low, high = scale_range
  high = min(high, height / size, width / size)  # The window fits.
  low = min(low, high)
  scale = rng.uniform(low, high)
  side = scale * size
  top = rng.uniform(0.0, height - side)
  left = rng.uniform(0.0, width - side)
  mirror = bool(rng.integers(2))
  return top, left, side, mirror


def crop(image: Image.Image, window, size: int) -> np.ndarray:
  """The `window` of :func:`draw_window` resampled to ``uint8 [S, S, 3]``.

  Output pixel ``(i, j)`` is the bilinear sample of the image at ``(top +
  (i + 0.5) * side / S, left + (j + 0.5) * side / S)`` (pixel ``k``
  covering ``[k, k + 1)``); outside the image 0.
  """
  top, left, side, mirror = window
  scale = side / size
  out = np.asarray(image.transform(
      (size, size), Image.Transform.AFFINE,
      (scale, 0.0, left, 0.0, scale, top),
      resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)), np.uint8)
  return out[:, ::-1] if mirror else out


def decode(split, index: int) -> Image.Image:
  """Example `index` of `split` decoded to an RGB image.

  Raises:
    InputError: its file is not an image PIL can decode (named).
  """
  try:
    image = Image.open(io.BytesIO(split.encoded(index)))
    return image.convert('RGB')
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f'{split.describe(index)} cannot be decoded as an '
                     f'image ({first_line(e)})') from e


def segmentation_train(image: np.ndarray, labels: np.ndarray,
                       rng: np.random.Generator, size: int):
  """A training example of segmentation: mirror, window, top-left canvas.

  Args:
    image: ``uint8 [H, W, 3]``.
    labels: ``uint8 [H, W]``.
    rng: the example's generator.
    size: ``S``.

  Returns:
    ``(uint8 [S, S, 3] image, uint8 [S, S] labels)``: the (mirrored,
    cropped where larger than S) image at the top-left, zeros and
    ``IGNORE_LABEL`` elsewhere.
  """
  if rng.integers(2):
    image, labels = image[:, ::-1], labels[:, ::-1]
  height, width = labels.shape
  top = int(rng.integers(height - size + 1)) if height > size else 0
  left = int(rng.integers(width - size + 1)) if width > size else 0
  window = (slice(top, top + size), slice(left, left + size))
  return _on_canvas(image[window], labels[window], size)


def segmentation_test(image: np.ndarray, labels: np.ndarray, size: int):
  """An evaluation example of segmentation: whole, at the top-left.

  An image larger than ``S`` is scaled down, keeping its aspect ratio, so
  that its longer side is ``S`` (image bilinear, labels nearest).
  """
  height, width = labels.shape
  if max(height, width) > size:
    factor = size / max(height, width)
    shape = (max(1, min(size, round(width * factor))),
             max(1, min(size, round(height * factor))))
    image = np.asarray(Image.fromarray(image).resize(
        shape, Image.Resampling.BILINEAR))
    labels = np.asarray(Image.fromarray(labels).resize(
        shape, Image.Resampling.NEAREST))
  return _on_canvas(image, labels, size)


def _on_canvas(image, labels, size):
  height, width = labels.shape
  image_canvas = np.zeros((size, size, 3), np.uint8)
  label_canvas = np.full((size, size), voc.IGNORE_LABEL, np.uint8)
  image_canvas[:height, :width] = image
  label_canvas[:height, :width] = labels
  return image_canvas, label_canvas


class VOCSource(HostBatches):
  """Host batches of a VOC split; implements ``data.source.Source``.

  Batches: classification training ``{'image': uint8 [B, S, S, 3],
  'label': int8 [B, 20], 'mask': f32 [B]}``, evaluation the same with
  ``image`` ``uint8 [B, test_crops, S, S, 3]``; segmentation ``{'image':
  uint8 [B, S, S, 3], 'label': uint8 [B, S, S], 'mask': f32 [B]}``.
  ``mask`` 0 marks the padding of the last evaluation batch (image 0,
  label 0 for classification, 255 for segmentation).
  """

  def __init__(self, split, *, mesh: Mesh, batch_size: int, train: bool,
               seed: int, image_size: int, test_crops: int = 10,
               scale_range=(0.5, 2.0), epoch_length: int = 0):
    """Sets up reading `split`.

    Args:
      split: a ``voc.ClassificationSplit`` or ``voc.SegmentationSplit``
        (which decides the task).
      mesh: the data mesh.
      batch_size: global batch size.
      train: shuffle, augment and drop the last partial batch if True; keep
        the order and pad the last batch (``mask`` 0) if False.
      seed: run seed (order and augmentation).
      image_size: ``S``, the side of the crops (segmentation: of the
        canvas).
      test_crops: crops per image of a classification evaluation.
      scale_range: ``(low, high)`` of a classification crop window's side
        over ``S`` (see the module docstring).
      epoch_length: samples per training epoch (0: one pass over the data).

    Raises:
      InputError: an image size, number of crops or scale range that
        cannot work.
    """
    if isinstance(split, voc.SegmentationSplit):
      self.segmentation = True
      self.class_names = voc.SEGMENTATION_CLASSES
    elif isinstance(split, voc.ClassificationSplit):
      self.segmentation = False
      self.class_names = voc.CLASSES
    else:
      raise TypeError(f'expected a voc.ClassificationSplit or '
                      f'voc.SegmentationSplit, not {type(split).__name__}')
    low, high = (float(s) for s in scale_range)
    if image_size <= 0 or test_crops <= 0 or not 0 < low <= high:
      raise InputError(
          f'VOC source: image_size={image_size}, test_crops={test_crops} '
          f'and scale_range={tuple(scale_range)} must be positive, with '
          'scale_range (low, high), 0 < low <= high')
    self.image_size = image_size
    self.test_crops = test_crops
    self.scale_range = (low, high)
    self._set_up_batches(split, mesh=mesh, batch_size=batch_size,
                         train=train, seed=seed, epoch_length=epoch_length)

  def _set_up_batches(self, split, *, mesh: Mesh, batch_size: int,
                      train: bool, seed: int, epoch_length: int) -> None:
    """The order, rows and step count of `split`'s batches (what
    :meth:`order`, :meth:`rows` and :meth:`epoch` read)."""
    self.num_examples = len(split)
    self.num_classes = len(self.class_names)
    self.batch_size = batch_size
    self.train = train
    self.seed = seed
    self._split = split
    self._mesh = mesh
    self._processes, self._process = jax.process_count(), jax.process_index()
    self._local_batch = batch_size // self._processes
    self._epoch_length = epoch_length or self.num_examples
    self.steps_per_epoch = shuffle.steps_per_epoch(
        self.num_examples, batch_size, train=train, epoch_length=epoch_length,
        processes=self._processes)
    self._threads = max(1, min(_MAX_THREADS, os.cpu_count() or 1))

  def order(self, epoch: int) -> np.ndarray:
    """The example index at each position of `epoch`."""
    if self.train:
      return shuffle.epoch_order(self.num_examples, self.seed, epoch,
                                 self._epoch_length)
    return np.arange(self.num_examples)

  def rows(self, order: np.ndarray, step: int) -> list[tuple[int, int]]:
    """``(position in the epoch, example index)`` of this process's rows
    of `step` of the epoch of `order`; ``(-1, -1)`` is padding."""
    rows = []
    for row in range(step * self._local_batch,
                     (step + 1) * self._local_batch):
      position = row * self._processes + self._process
      rows.append((position, int(order[position]))
                  if position < len(order) else (-1, -1))
    return rows

  def example(self, epoch: int, position: int, index: int) -> dict:
    """The example at `position` of `epoch` (example `index`), as numpy
    arrays without the batch axis; pure and thread-safe."""
    split = self._split
    if index < 0:
      return self._padding()
    image = decode(split, index)
    if self.train:
      rng = np.random.default_rng(
          [self.seed, _TRAIN_STREAM, epoch, position])
    else:
      rng = np.random.default_rng([self.seed, _TEST_STREAM, index])
    if self.segmentation:
      labels = split.mask(index)
      pixels = np.asarray(image, np.uint8)
      if self.train:
        image, labels = segmentation_train(pixels, labels, rng,
                                           self.image_size)
      else:
        image, labels = segmentation_test(pixels, labels, self.image_size)
      return {'image': image, 'label': labels, 'mask': np.float32(1)}
    width, height = image.size
    crops = [crop(image, draw_window(rng, height, width, self.image_size,
                                     self.scale_range), self.image_size)
             for _ in range(1 if self.train else self.test_crops)]
    return {'image': crops[0] if self.train else np.stack(crops),
            'label': np.asarray(split.targets[index], np.int8),
            'mask': np.float32(1)}

  def _padding(self) -> dict:
    size = self.image_size
    if self.segmentation:
      return {'image': np.zeros((size, size, 3), np.uint8),
              'label': np.full((size, size), voc.IGNORE_LABEL, np.uint8),
              'mask': np.float32(0)}
    shape = (size, size, 3) if self.train else (self.test_crops, size,
                                                 size, 3)
    return {'image': np.zeros(shape, np.uint8),
            'label': np.zeros(self.num_classes, np.int8),
            'mask': np.float32(0)}

  def epoch(self, epoch: int, start_step: int = 0):
    """Yields the global batches of `epoch` from step `start_step` on.

    Examples are decoded in a thread pool, :data:`PREFETCH_BATCHES`
    batches ahead of the one yielded; steps before `start_step` are never
    decoded. A file that cannot be decoded is an InputError naming it.
    """
    steps = self.steps_per_epoch
    pool = concurrent.futures.ThreadPoolExecutor(
        self._threads, thread_name_prefix='voc-decode')
    pending = collections.deque()
    order = self.order(epoch)

    def submit(step):
      pending.append([pool.submit(self.example, epoch, position, index)
                      for position, index in self.rows(order, step)])

    try:
      next_step = start_step
      for step in range(start_step, steps):
        while next_step < min(steps, step + 1 + PREFETCH_BATCHES):
          submit(next_step)
          next_step += 1
        examples = [future.result() for future in pending.popleft()]
        batch = {key: np.stack([e[key] for e in examples])
                 for key in examples[0]}
        yield parallel.host_to_global(self._mesh, batch)
    finally:
      # Also when the caller stops early or a file fails: drop the queued
      # decodes, let the running ones finish on their own.
      pool.shutdown(wait=False, cancel_futures=True)
