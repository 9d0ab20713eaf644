"""tf.data host pipeline: TFDS datasets, image folders and bundled digits.

Each process reads its own share of the examples (files or TFDS shards),
shuffles them per epoch with a seed derived from (seed, epoch), decodes and
augments them on the host (random crop of the 4-pixel zero-padded image and
horizontal flip, with stateless per-example seeds, so an epoch is the same
whenever it runs), batches them and hands global ``jax.Array``s sharded on
the mesh's ``data`` axis to the train step. Imports TensorFlow.
"""

import collections
import math

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh

from rotnet_jax import parallel
from rotnet_jax.data import arrays
from rotnet_jax.data import augment as augment_lib
from rotnet_jax.data import digits
from rotnet_jax.data import folder
from rotnet_jax.data import shuffle
from rotnet_jax.data import tfds_util

# TensorFlow stays off the accelerators (tfds_util sets this too).
tf.config.set_visible_devices([], 'GPU')

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
  pad = augment_lib.CROP_PADDING
  height, width = image.shape[0], image.shape[1]
  offset_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform([2], offset_seed, minval=0,
                                        maxval=2 * pad + 1, dtype=tf.int32)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.slice(padded, [offsets[0], offsets[1], 0], [height, width, 3])
  flip = tf.random.stateless_uniform([], flip_seed) < 0.5
  return tf.cond(flip, lambda: image[:, ::-1], lambda: image)


class TFDataSource:
  """Host-side batches; interchangeable with ``DeviceSource``.

  Attributes:
    num_examples: examples in the split (all processes).
    num_classes: class count of the dataset's labels.
    batch_size: global batch size.
    steps_per_epoch: as for ``DeviceSource``.
    resident: empty: every batch arrives whole from the host.
  """

  resident = {}

  def __init__(self, dataset: str, split: str, *, mesh: Mesh,
               batch_size: int, train: bool, seed: int, image_size: int,
               data_dir: str | None = None,
               shuffle_buffer_size: int = 50_000,
               num_examples_limit: int = 0):
    self.batch_size = batch_size
    self.train = train
    self.seed = seed
    self._mesh = mesh
    self._image_size = image_size
    self._shuffle_buffer_size = shuffle_buffer_size
    processes, process = jax.process_count(), jax.process_index()
    self._local_batch = batch_size // processes
    kind = arrays.dataset_kind(dataset)
    self._tfds_base = None
    if kind == 'tfds':
      tfds_util.get_builder(dataset, data_dir)  # Fails fast on a bad name.
      if num_examples_limit:
        raise ValueError(
            'num_train_examples needs pipeline=device for TFDS datasets '
            f'(dataset={dataset!r}, pipeline=tfdata)')
      builder = tfds_util.prepared_builder(dataset, data_dir)
      tfds_util.check_split(builder, split)
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      local_split = tfds.split_for_jax_process(split, drop_remainder=train)
      self.num_examples = builder.info.splits[split].num_examples
      self.num_classes = tfds_util.num_classes(builder)
      self._num_local = builder.info.splits[local_split].num_examples
      self._tfds_base = builder.as_dataset(
          split=local_split, shuffle_files=False).map(
              lambda x: {'image': x['image'], 'label': x['label']},
              num_parallel_calls=tf.data.AUTOTUNE).cache()
    else:
      if kind == 'digits':
        images, labels = digits.load(split)
        self.num_classes = digits.NUM_CLASSES
        if images.shape[1:3] != (image_size, image_size):
          raise ValueError(f'digits images are {images.shape[1]}px, '
                           f'config.image_size={image_size}')
        items = images
      else:
        index = folder.scan(dataset, split)
        folder.check_images(index, image_size)
        items, labels = np.asarray(index.paths), index.labels
        self.num_classes = len(index.class_names)
      keep = arrays.subset_indices(len(labels), num_examples_limit)
      items, labels = items[keep], labels[keep]
      self._is_files = kind == 'folder'
      self._items = items[process::processes]
      self._labels = np.asarray(labels[process::processes], np.int32)
      self.num_examples = len(labels)
      self._num_local = len(self._labels)
    if train:
      # Every process runs the same number of steps: that of the smallest
      # share, floor(N / processes).
      self.steps_per_epoch = (self.num_examples // processes
                              // self._local_batch)
      if self.steps_per_epoch == 0:
        raise ValueError(f'batch_size={batch_size} is larger than the '
                         f'{self.num_examples} training examples')
    else:
      largest_share = math.ceil(self.num_examples / processes)
      self.steps_per_epoch = math.ceil(largest_share / self._local_batch)

  def _examples(self, epoch: int) -> tf.data.Dataset:
    """This process's examples for `epoch`, shuffled when training."""
    seed = shuffle.epoch_seed(self.seed, epoch)
    if self._tfds_base is not None:
      ds = self._tfds_base
      if self.train:
        ds = ds.shuffle(min(self._shuffle_buffer_size, self._num_local),
                        seed=seed, reshuffle_each_iteration=False)
      return ds
    order = (shuffle.epoch_order(self._num_local, self.seed, epoch)
             if self.train else np.arange(self._num_local))
    ds = tf.data.Dataset.from_tensor_slices(
        {'image': self._items[order], 'label': self._labels[order]})
    if self._is_files:
      ds = ds.map(lambda x: {'image': _decode_file(x['image']),
                             'label': x['label']},
                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds

  def _dataset(self, epoch: int) -> tf.data.Dataset:
    size = self._image_size
    ds = self._examples(epoch)

    def finish(index, example):
      image = tf.ensure_shape(example['image'], [size, size, 3])
      if self.train:
        seed = tf.stack([tf.constant(shuffle.epoch_seed(self.seed, epoch),
                                     tf.int64), index])
        image = _crop_flip(image, seed)
      return {'image': image, 'label': tf.cast(example['label'], tf.int32),
              'mask': tf.constant(1.0, tf.float32)}

    ds = ds.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    steps = self.steps_per_epoch
    if not self.train:
      padding = steps * self._local_batch - self._num_local
      ds = ds.concatenate(tf.data.Dataset.from_tensors({
          'image': tf.zeros([size, size, 3], tf.uint8),
          'label': tf.constant(0, tf.int32),
          'mask': tf.constant(0.0, tf.float32)}).repeat(padding))
    ds = ds.batch(self._local_batch, drop_remainder=True).take(steps)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

  def epoch(self, epoch: int):
    """Yields the global batches of `epoch`, a few already sent to devices."""
    in_flight = collections.deque()
    for local_batch in self._dataset(epoch).as_numpy_iterator():
      in_flight.append(parallel.host_to_global(self._mesh, local_batch))
      if len(in_flight) > _DEVICE_PREFETCH:
        yield in_flight.popleft()
    while in_flight:
      yield in_flight.popleft()

  def materialize(self, resident, inputs):
    """The batch is complete already; runs inside jit."""
    del resident
    return inputs
