"""Opens one split of the configured dataset for either source.

The one place that decides how ``config.dataset`` is read (bundled digits,
an image folder, or a TFDS name), checks it, and applies the training
subset, so that both pipelines see the same examples with the same labels:

* ``decoded=True`` (the device pipeline): the images of the split, decoded
  into memory (through the caches of ``arrays``, which need no TensorFlow
  once filled).
* ``decoded=False`` (the tf.data pipeline): what tf.data reads, the file
  paths of an image folder (each file checked once) or a prepared TFDS
  builder; digits are in memory either way.

Imports no TensorFlow; TFDS is imported only when a TFDS split is read
through it.
"""

import dataclasses
import os
from typing import Any

import numpy as np

from rotnet_jax.data import arrays
from rotnet_jax.data import digits
from rotnet_jax.data import folder
from rotnet_jax.data import image_check
from rotnet_jax.errors import InputError

KINDS = ('digits', 'folder', 'tfds')
# The augmentations (config.augmentation) of images of any size, read by
# the tf.data pipeline: every image is cropped and resized to image_size
# (data/imagenet_preprocess.py, whose TRAIN_AUGMENTATIONS are the same).
ANY_SIZE_AUGMENTATIONS = ('imagenet', 'resize_crop')
# Class-folder names listed in full in an error message; longer lists are
# cut (ImageNet has 1,000).
_MAX_NAMES_SHOWN = 10


def dataset_kind(dataset: str) -> str:
  """How `dataset` is read: ``digits``, ``folder`` or ``tfds``.

  A folder is an existing directory or anything that looks like a path
  (starts with ``/``, ``.`` or ``~``); other names are TFDS names.
  """
  if dataset == 'digits':
    return 'digits'
  if dataset.startswith(('/', '.', '~')) or os.path.isdir(dataset):
    return 'folder'
  return 'tfds'


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, opened: its examples after any training subset.

  Attributes:
    dataset: ``config.dataset``.
    name: the split's name.
    kind: one of :data:`KINDS`.
    image_size: side of every image (checked), or with an ``augmentation``
      of :data:`ANY_SIZE_AUGMENTATIONS` of every augmented image (the
      files have any size).
    num_classes: classes of the dataset's labels.
    class_names: names of the classes (labels index into them): the class
      folders of an image folder, the digits of digits; empty for TFDS.
    num_total: examples of the whole split.
    keep: increasing indices into the whole split of the training subset's
      examples; None when every example is used.
    labels: ``int32 [num_examples]``, the label of every used example in
      dataset order; None for a TFDS split read by tf.data without a subset
      (tf.data reads its labels with the images).
    images: ``uint8 [num_examples, S, S, 3]`` when opened ``decoded``, and
      for digits; else None.
    paths: the used image files of an image folder opened for tf.data.
    builder: the prepared TFDS builder of a TFDS split opened for tf.data.
    augmentation: ``config.augmentation`` (how tf.data decodes and
      augments).
    eval_resize_size: images of any size: the evaluation resize of the
      shorter side (and ``resize_crop``'s training resize), resolved (see
      :func:`eval_resize_size`).
  """
  dataset: str
  name: str
  kind: str
  image_size: int
  num_classes: int
  class_names: tuple[str, ...]
  num_total: int
  keep: np.ndarray | None = None
  labels: np.ndarray | None = None
  images: np.ndarray | None = None
  paths: np.ndarray | None = None
  builder: Any = None
  augmentation: str = 'cifar'
  eval_resize_size: int = 0

  @property
  def num_examples(self) -> int:
    """Examples used: the training subset's, or the whole split's."""
    return self.num_total if self.keep is None else len(self.keep)

  @property
  def any_size(self) -> bool:
    """Whether its images have any size (cropped and resized by tf.data
    as :data:`ANY_SIZE_AUGMENTATIONS` say)."""
    return self.augmentation in ANY_SIZE_AUGMENTATIONS


def any_size(config) -> bool:
  """Whether images of any size are accepted (an ``augmentation`` of
  :data:`ANY_SIZE_AUGMENTATIONS`: every image is cropped and resized to
  ``image_size``)."""
  return config.get('augmentation', 'cifar') in ANY_SIZE_AUGMENTATIONS


def eval_resize_size(config) -> int:
  """``config.eval_resize_size``, resolved: 0 means ``round(S * 8 / 7)``,
  256 for 224 (the official ``Scale(256)``, ``CenterCrop(224)``; with
  ``augmentation='resize_crop'`` also the training resize before the
  random crop)."""
  return (config.get('eval_resize_size', 0) or
          round(config.image_size * 8 / 7))


def training_subset(labels: np.ndarray, *, num_examples: int = 0,
                    examples_per_class: int = 0) -> np.ndarray:
  """Indices of the training examples to keep (all by default).

  Args:
    labels: class of every example, in dataset order.
    num_examples: keep this many, evenly spaced (every N/n-th example), so
      that a class-sorted image folder keeps every class. 0: all.
    examples_per_class: keep the first K examples of every class, in
      the order of `labels` (the paper's semi-supervised setting; see
      :func:`subset_order`). 0: all.

  Raises:
    InputError: both are set, or K exceeds the smallest class.
  """
  total = len(labels)
  if num_examples and examples_per_class:
    raise InputError('set num_train_examples or examples_per_class, not both')
  if examples_per_class:
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if examples_per_class > present.min():
      raise InputError(
          f'examples_per_class={examples_per_class} is more than the '
          f'smallest class has ({present.min()} images of class '
          f'{int(np.flatnonzero(counts == present.min())[0])})')
    rank_in_class = np.empty(total, np.int64)
    for label in np.flatnonzero(counts):
      members = np.flatnonzero(labels == label)
      rank_in_class[members] = np.arange(len(members))
    return np.flatnonzero(rank_in_class < examples_per_class)
  if 0 < num_examples < total:
    return np.arange(num_examples) * total // num_examples
  return np.arange(total)


def subset_order(config) -> str | None:
  """Which order "the first K examples of every class" follows, for
  ``results.json``; None when ``config.examples_per_class`` is unset."""
  if not config.examples_per_class:
    return None
  kind = dataset_kind(config.dataset)
  if kind == 'digits':
    return 'digits order'
  if kind == 'folder':
    return 'file order (sorted file names within each class folder)'
  from rotnet_jax.data import tfds_util  # pylint: disable=g-import-not-at-top
  if tfds_util.has_original_order(
      tfds_util.prepared_builder(config.dataset, config.data_dir)):
    return 'original release order (TFDS id field)'
  return 'TFDS stored order (the dataset has no id field)'


def open_split(config, split: str, *, train: bool, decoded: bool) -> Split:
  """Opens `split` of ``config.dataset``, checked, with the training subset.

  Args:
    config: the run config (``dataset``, ``data_dir``, ``cache_dir``,
      ``image_size``, ``train_split``, and for training
      ``num_train_examples`` and ``examples_per_class``).
    split: split name.
    train: apply the training subset; evaluation reads the whole split.
    decoded: decode the images into memory (the device pipeline) rather
      than leave them to tf.data.

  Raises:
    InputError: the dataset cannot be read, an image fails the image check,
      an image folder's split has other class folders than the training
      split, or the training subset is impossible.
    MissingInputError: the dataset or split does not exist.
  """
  kind = dataset_kind(config.dataset)
  opener = {'digits': _open_digits, 'folder': _open_folder,
            'tfds': _open_tfds}[kind]
  opened = opener(config, split, decoded=decoded)
  if any_size(config):
    opened = dataclasses.replace(opened, augmentation=config.augmentation,
                                 eval_resize_size=eval_resize_size(config))
  if not (train and (config.num_train_examples or config.examples_per_class)):
    return opened
  labels = opened.labels
  if labels is None:  # A TFDS split left to tf.data; one pass, no decoding.
    from rotnet_jax.data import tfds_util  # pylint: disable=g-import-not-at-top
    labels = tfds_util.read_labels(opened.builder, split)
  order = None
  if config.examples_per_class and kind == 'tfds':
    from rotnet_jax.data import tfds_util  # pylint: disable=g-import-not-at-top
    order = tfds_util.original_order(
        opened.builder or tfds_util.prepared_builder(config.dataset,
                                                     config.data_dir), split)
  if order is None:
    keep = training_subset(labels,
                           num_examples=config.num_train_examples,
                           examples_per_class=config.examples_per_class)
  else:
    # "The first K of each class" in the original release's order; the
    # kept positions are stored positions again, increasing.
    keep = np.sort(order[training_subset(
        labels[order], examples_per_class=config.examples_per_class)])
  return dataclasses.replace(
      opened, keep=keep, labels=labels[keep],
      images=None if opened.images is None else opened.images[keep],
      paths=None if opened.paths is None else opened.paths[keep])


def _open_digits(config, split, *, decoded):
  del decoded  # In memory either way.
  images, labels = digits.load(split)
  image_check.check_shape(f'each image of dataset {config.dataset!r}',
                          images.shape, config.image_size,
                          any_size=any_size(config))
  return Split(config.dataset, split, 'digits', config.image_size,
               digits.NUM_CLASSES,
               tuple(str(c) for c in range(digits.NUM_CLASSES)),
               len(labels), labels=labels, images=images)


def _open_folder(config, split, *, decoded):
  index = folder.scan(config.dataset, split)
  if split != config.train_split:
    _check_same_classes(index, config.train_split)
  if decoded:
    images, paths = arrays.folder_images(index, config.image_size,
                                         config.cache_dir), None
  else:
    if any_size(config):
      # Decoding every file up front would take hours on ImageNet: empty
      # files are named now (free), other bad files when they are met.
      folder.check_sizes(index)
    else:
      folder.check_images(index, config.image_size)
    images, paths = None, np.asarray(index.paths)
  return Split(config.dataset, split, 'folder', config.image_size,
               len(index.class_names), index.class_names, len(index.labels),
               labels=index.labels, images=images, paths=paths)


def _check_same_classes(index: folder.FolderIndex, train_split: str) -> None:
  """Raises InputError unless `index` has the training split's class folders.

  Labels are class-folder indices in sorted name order, counted per split:
  a folder renamed, missing or added in one split would silently give its
  classes other labels than in training.
  """
  train_classes = folder.list_classes(index.root, train_split)
  if index.class_names == train_classes:
    return
  only_here = sorted(set(index.class_names) - set(train_classes))
  only_train = sorted(set(train_classes) - set(index.class_names))
  raise InputError(
      f'image folder {index.root}: split {index.split!r} has other class '
      f'folders than the training split {train_split!r} '
      '(config.train_split), so its labels (class-folder indices in sorted '
      f'order) would not match training. Only in {index.split!r}: '
      f'{_names(only_here)}; only in {train_split!r}: {_names(only_train)}. '
      f'Valid: the class folders of {train_split!r}, '
      f'{_names(train_classes)}.')


def _names(names) -> str:
  if not names:
    return 'none'
  shown = ', '.join(repr(name) for name in names[:_MAX_NAMES_SHOWN])
  if len(names) > _MAX_NAMES_SHOWN:
    shown += f', ... ({len(names)} in all)'
  return f'[{shown}]'


def _open_tfds(config, split, *, decoded):
  what = f'each image of TFDS dataset {config.dataset!r}'
  if decoded:
    data = arrays.tfds_split(config.dataset, split, config.data_dir,
                             config.cache_dir)
    image_check.check_shape(what, data.images.shape, config.image_size)
    return Split(config.dataset, split, 'tfds', config.image_size,
                 data.num_classes, (), len(data.labels), labels=data.labels,
                 images=data.images)
  from rotnet_jax.data import tfds_util  # pylint: disable=g-import-not-at-top
  builder = tfds_util.prepared_builder(config.dataset, config.data_dir)
  tfds_util.check_split(builder, split)
  image_check.check_shape(what, tfds_util.image_shape(builder),
                          config.image_size, any_size=any_size(config))
  return Split(config.dataset, split, 'tfds', config.image_size,
               tfds_util.num_classes(builder), (),
               builder.info.splits[split].num_examples, builder=builder)
