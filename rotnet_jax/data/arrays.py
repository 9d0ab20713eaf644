"""Whole splits as in-memory uint8 arrays, without TensorFlow when possible.

The device-resident source puts these arrays on the devices. Three origins:
``digits`` (bundled with scikit-learn), an image folder (decoded with PIL
and cached as ``.npy`` in ``cache_dir``), and a TFDS name (read once
through TFDS, which imports TensorFlow, then cached the same way so later
runs need neither).
"""

import dataclasses
import hashlib
import os

import numpy as np

from rotnet_jax.data import digits
from rotnet_jax.data import folder
from rotnet_jax.errors import InputError

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'rotnet_jax')


@dataclasses.dataclass(frozen=True)
class SplitArrays:
  """One split in memory: ``images uint8 [N, S, S, 3]``, ``labels int32 [N]``."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


def training_subset(labels: np.ndarray, *, num_examples: int = 0,
                    examples_per_class: int = 0) -> np.ndarray:
  """Indices of the training examples to keep (all by default).

  Args:
    labels: class of every example, in dataset order.
    num_examples: keep this many, evenly spaced (every N/n-th example), so
      that a class-sorted image folder keeps every class. 0: all.
    examples_per_class: keep the first K examples of every class, in
      dataset order (the paper's semi-supervised setting): file order in an
      image folder, TFDS's stored order for a TFDS dataset. 0: all.

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


def load_split(dataset: str, split: str, *, image_size: int,
               data_dir: str | None = None,
               cache_dir: str | None = None) -> SplitArrays:
  """Loads a whole split into memory (see module docstring)."""
  kind = dataset_kind(dataset)
  if kind == 'digits':
    images, labels = digits.load(split)
    _check_image_size(dataset, images, image_size)
    return SplitArrays(images, labels, digits.NUM_CLASSES)
  cache_dir = cache_dir or DEFAULT_CACHE_DIR
  if kind == 'folder':
    index = folder.scan(dataset, split)
    images = folder.load_cached(index, image_size, cache_dir)
    return SplitArrays(images, index.labels, len(index.class_names))
  return _load_tfds_cached(dataset, split, image_size, data_dir, cache_dir)


def _check_image_size(dataset, images, image_size):
  if images.shape[1:3] != (image_size, image_size):
    raise InputError(
        f'dataset {dataset!r} has {images.shape[1]}x{images.shape[2]} images '
        f'but config.image_size={image_size}')


def _load_tfds_cached(name, split, image_size, data_dir, cache_dir):
  key = hashlib.sha256(f'{name}|{split}|{data_dir}'.encode()).hexdigest()[:16]
  path = os.path.join(os.path.expanduser(cache_dir),
                      f'tfds-{name.replace("/", "_")}-{split}-{key}.npz')
  if not os.path.exists(path):
    try:
      from rotnet_jax.data import tfds_util  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise InputError(
          f'dataset={name!r} is read through TensorFlow Datasets the first '
          f'time, and TensorFlow is not installed ({e}). Install it '
          f"(pip install -e '.[tf]'), run once on a machine that has it to "
          f'fill the cache ({path}), or pass an image folder as dataset=.'
      ) from e
    images, labels, num_classes = tfds_util.load_as_arrays(name, split,
                                                           data_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}.npz'
    np.savez(tmp, images=images, labels=labels, num_classes=num_classes)
    os.replace(tmp, path)
  with np.load(path) as cached:
    result = SplitArrays(cached['images'], cached['labels'].astype(np.int32),
                         int(cached['num_classes']))
  _check_image_size(name, result.images, image_size)
  return result
