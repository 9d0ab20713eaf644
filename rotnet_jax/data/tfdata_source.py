"""tf.data host pipeline: TFDS datasets, image folders and bundled digits.

Image folders and digits: every process computes the same global order of
the epoch (``shuffle.epoch_order``) and reads positions
``process, process + P, ...`` of it, so global batch ``b`` holds the same
examples whatever the number of processes. Each example is augmented (random
crop of the 4-pixel zero-padded image, horizontal flip) with a stateless
seed of (seed, epoch, position in the epoch), so an epoch is the same
whenever it runs. TFDS datasets: each process reads its own share
(``tfds_util.process_examples``: its shard of the split, or with a training
subset its equal share of the kept examples) and shuffles it with a seed
that includes the process index; an epoch longer than the share
(``epoch_examples``) repeats it, reshuffled each pass.

``augmentation='imagenet'`` or ``'resize_crop'`` (images of any size)
swaps only the per-example function: images are decoded and augmented
together (``imagenet_preprocess``: for training a random-sized crop, or a
random crop of the resized image, and a flip; resize and central crop for
evaluation), TFDS images are read encoded and not cached, and an image
file that fails to decode stops the pipeline with an error naming it.

Batches leave as global ``jax.Array``s sharded on the mesh's ``data`` axis.
Imports TensorFlow.
"""

import collections
import math
import threading

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh

from rotnet_jax import parallel
from rotnet_jax.data import datasets
from rotnet_jax.data import imagenet_preprocess
from rotnet_jax.data import shuffle
from rotnet_jax.data import tfds_util
from rotnet_jax.data import transforms
from rotnet_jax.data.source import HostBatches
from rotnet_jax.errors import InputError

_DEVICE_PREFETCH = 2


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  data = tf.io.read_file(path)
  # INTEGER_ACCURATE matches PIL's JPEG decoder bit for bit, so both data
  # sources see the same pixels.
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3,
                                dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_png(data, channels=3))


def _crop_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random crop of the zero-padded image and a random flip (stateless)."""
  pad = transforms.CROP_PADDING
  height, width = image.shape[0], image.shape[1]
  offset_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform([2], offset_seed, minval=0,
                                        maxval=2 * pad + 1, dtype=tf.int32)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.slice(padded, [offsets[0], offsets[1], 0], [height, width, 3])
  flip = tf.random.stateless_uniform([], flip_seed) < 0.5
  return tf.cond(flip, lambda: image[:, ::-1], lambda: image)


class TFDataSource(HostBatches):
  """Host-side batches; implements ``rotnet_jax.data.source.Source``."""

  def __init__(self, split: datasets.Split, *, mesh: Mesh, batch_size: int,
               train: bool, seed: int, shuffle_buffer_size: int = 50_000,
               epoch_length: int = 0):
    """Sets up reading `split` (and for TFDS, this process's share of it).

    Args:
      split: the split, opened with ``decoded=False`` (a training subset is
        already applied).
      mesh: the data mesh.
      batch_size: global batch size.
      train: shuffle, augment and drop the last partial batch if True; keep
        the order and pad the last batch (``mask`` 0) if False.
      seed: run seed (order and augmentation).
      shuffle_buffer_size: tf.data shuffle buffer of a TFDS dataset.
      epoch_length: samples per training epoch (0: one pass over the data).
    """
    self.num_examples = split.num_examples
    self.num_classes = split.num_classes
    self.class_names = split.class_names
    self.batch_size = batch_size
    self.train = train
    self.seed = seed
    self._mesh = mesh
    self._image_size = split.image_size
    self._processes, self._process = jax.process_count(), jax.process_index()
    self._local_batch = batch_size // self._processes
    self._epoch_length = epoch_length or self.num_examples
    self.steps_per_epoch = shuffle.steps_per_epoch(
        self.num_examples, batch_size, train=train, epoch_length=epoch_length,
        processes=self._processes)
    self._imagenet = split.any_size
    self._augmentation = split.augmentation
    self._is_files = split.kind == 'folder'
    self._eval_resize_size = split.eval_resize_size
    if split.kind == 'tfds':
      self._init_tfds(split, shuffle_buffer_size)
    else:
      self._items = split.paths if split.kind == 'folder' else split.images
      self._labels = np.asarray(split.labels, np.int32)
      self._is_files = split.kind == 'folder'
      self._tfds_base = None

  def _init_tfds(self, split, shuffle_buffer_size):
    """This process's examples, and how often to repeat them per epoch."""
    self._tfds_base, num_local = tfds_util.process_examples(
        split.builder, split.name, process=self._process,
        processes=self._processes, drop_remainder=self.train, keep=split.keep,
        encoded=self._imagenet)
    self._shuffle_buffer_size = min(shuffle_buffer_size, num_local)
    # An epoch longer than this process's share (epoch_examples) repeats
    # the share, reshuffled each pass; every process runs the same
    # steps_per_epoch.
    self._passes = 1
    if self.train:
      if not num_local:
        raise InputError(
            f'{self.num_examples} training examples of {split.dataset!r} '
            f'are too few to give each of {self._processes} processes one')
      self._passes = math.ceil(self.steps_per_epoch * self._local_batch /
                               num_local)

  def _examples(self, epoch: int, skip: int = 0) -> tf.data.Dataset:
    """This process's examples of `epoch` with their augmentation seeds,
    from its `skip`-th on (a run resumed mid-epoch).

    Image folders and digits know the epoch's order up front: the skipped
    examples are never read nor decoded. TFDS shuffles in tf.data, so the
    skipped examples still go through the shuffle buffer (read from
    storage, no augmentation); that costs a fraction of an epoch once per
    resume.
    """
    if self._tfds_base is not None:
      seed = shuffle.epoch_seed(self.seed, epoch, self._process)
      ds = self._tfds_base
      if self.train:
        ds = ds.shuffle(self._shuffle_buffer_size, seed=seed,
                        reshuffle_each_iteration=self._passes > 1)
        if self._passes > 1:
          ds = ds.repeat(self._passes)
      # Skipped after `enumerate`: the kept examples keep their seeds.
      return ds.enumerate().skip(skip).map(lambda i, x: dict(
          x, seed=tf.stack([tf.constant(seed, tf.int64), i])))
    if self.train:
      order = shuffle.epoch_order(self.num_examples, self.seed, epoch,
                                  self._epoch_length)
    else:
      order = np.arange(self.num_examples)
    positions = np.arange(self._process, len(order), self._processes)[skip:]
    local = order[positions]
    seed = shuffle.epoch_seed(self.seed, epoch)
    ds = tf.data.Dataset.from_tensor_slices({
        'image': self._items[local], 'label': self._labels[local],
        'seed': np.stack([np.full(len(local), seed, np.int64),
                          positions.astype(np.int64)], axis=1)})
    if self._is_files and self._imagenet:
      # Read, decoded and augmented in one step; a bad file is named (by
      # the check of _dataset's finish: imagenet_preprocess.checked_file).
      ds = imagenet_preprocess.map_files(ds, self._items[local],
                                         self._augment_encoded)
    elif self._is_files:
      ds = ds.map(lambda x: dict(x, image=_decode_file(x['image'])),
                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds

  def _augment_encoded(self, data: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Images of any size: encoded bytes to the augmented image.

    One ``tf.function``, traced once for all epochs: traced anew in each
    epoch's pipeline it cost 0.1 s of CPU per epoch (0.1 ms per image of
    a 1024-image epoch).
    """
    fn = getattr(self, '_augment_encoded_fn', None)
    if fn is None:
      fn = self._augment_encoded_fn = tf.function(
          self._augment_bytes, input_signature=[
              tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)])
    return fn(data, seed)

  def _augment_bytes(self, data: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    if self.train:
      return imagenet_preprocess.train_bytes(
          data, seed, self._image_size, self._augmentation,
          self._eval_resize_size)
    return imagenet_preprocess.eval_bytes(data, self._image_size,
                                          self._eval_resize_size)

  def _augment(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The per-example transform of ``_dataset``: what ``_examples`` gives
    (decoded pixels, encoded TFDS bytes, or an image folder's already
    augmented image) to the final ``uint8 [S, S, 3]`` image."""
    size = self._image_size
    if not self._imagenet:
      image = tf.ensure_shape(image, [size, size, 3])
      return _crop_flip(image, seed) if self.train else image
    if self._is_files:
      return tf.ensure_shape(image, [size, size, 3])  # Done in _examples.
    if image.dtype == tf.string:  # TFDS, read encoded.
      return self._augment_encoded(image, seed)
    if self.train:
      return imagenet_preprocess.train_image(
          image, seed, size, self._augmentation, self._eval_resize_size)
    return imagenet_preprocess.eval_image(image, size, self._eval_resize_size)

  def _dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
    size = self._image_size

    def finish(example):
      mask = tf.constant(1.0, tf.float32)
      if self._is_files and self._imagenet:  # See _examples.
        example, mask = imagenet_preprocess.checked_file(example)
      image = self._augment(example['image'], example['seed'])
      return {'image': image, 'label': tf.cast(example['label'], tf.int32),
              'mask': mask}

    ds = self._examples(epoch, start_step * self._local_batch).map(
        finish, num_parallel_calls=tf.data.AUTOTUNE)
    steps = self.steps_per_epoch
    if not self.train:
      ds = ds.concatenate(tf.data.Dataset.from_tensors({
          'image': tf.zeros([size, size, 3], tf.uint8),
          'label': tf.constant(0, tf.int32),
          'mask': tf.constant(0.0, tf.float32)}).repeat())
    ds = ds.batch(self._local_batch, drop_remainder=True).take(
        max(steps - start_step, 0))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

  def epoch(self, epoch: int, start_step: int = 0):
    """Yields the global batches of `epoch` from step `start_step` on, a
    few already sent to devices (see :meth:`_examples` for the cost of
    skipping).

    Exactly the epoch's batches are asked of the pipeline, and its
    teardown (releasing the tf.data iterator, which waits for the
    pipeline's threads to stop: 5 ms to 2.5 s on the project's loaded
    2-core machine) starts only once the last batch is yielded, on
    another thread (:func:`_tear_down_later`): neither the batches still
    in flight nor the caller's next step wait for it.
    """
    steps = max(self.steps_per_epoch - start_step, 0)
    # A file that cannot be decoded becomes an InputError naming it, where
    # the pipeline meets it.
    batches = imagenet_preprocess.raise_input_errors(
        self._dataset(epoch, start_step).as_numpy_iterator())
    in_flight = collections.deque()
    try:
      for _ in range(steps):
        local_batch = next(batches, None)
        if local_batch is None:  # Not expected: _dataset has `steps`.
          break
        in_flight.append(parallel.host_to_global(self._mesh, local_batch))
        if len(in_flight) > _DEVICE_PREFETCH:
          yield in_flight.popleft()
      while in_flight:
        yield in_flight.popleft()
    finally:
      # Also when the caller stops early (a preempted run) or an error
      # stops the pipeline.
      _tear_down_later(batches)


def _tear_down_later(batches) -> None:
  """Closes `batches`, freeing its tf.data iterator, on a new thread.

  Freeing an iterator waits for its pipeline's threads to stop; the
  caller (the next train step, the epoch's test pass and checkpoint)
  need not wait with it. Not a daemon thread: the interpreter waits for
  it at exit, so no pipeline thread outlives Python.
  """
  try:
    threading.Thread(target=batches.close, name='tfdata-teardown').start()
  except RuntimeError:  # No new threads at interpreter shutdown.
    batches.close()
