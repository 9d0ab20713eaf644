"""Whole splits as in-memory uint8 arrays, cached so later runs decode nothing.

The device-resident source puts these arrays on the devices. An image
folder is decoded with PIL and cached as ``.npy`` in ``cache_dir``; a TFDS
split is read once through TFDS (which imports TensorFlow), then cached as
``.npz`` the same way, so later runs need neither TensorFlow nor TFDS.
Which dataset is which is decided in ``rotnet_jax.data.datasets``.
"""

import dataclasses
import hashlib
import os

import numpy as np

from rotnet_jax.data import folder
from rotnet_jax.errors import InputError

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'rotnet_jax')


@dataclasses.dataclass(frozen=True)
class SplitArrays:
  """One split in memory: ``images uint8 [N, S, S, 3]``, ``labels int32 [N]``.

  ``class_names`` names the labels where the dataset does (image folders,
  digits); empty otherwise.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...] = ()


def folder_images(index: folder.FolderIndex, image_size: int,
                  cache_dir: str | None = None) -> np.ndarray:
  """Decoded images of `index`, from `cache_dir` when decoded before.

  The cache file's name holds the index fingerprint, so any added, removed
  or modified file leads to a fresh decode. Written atomically: an
  interrupted run leaves no half-written cache.

  Raises:
    InputError: naming the first file that cannot be read or fails the
      image check (only when decoding, not from the cache).
  """
  name = (f'{os.path.basename(index.root) or "root"}-{index.split}-'
          f'{image_size}-{index.fingerprint}.npy')
  path = os.path.join(_cache_dir(cache_dir), name)
  if os.path.exists(path):
    images = np.load(path, mmap_mode='r')
    if images.shape == (len(index.paths), image_size, image_size, 3):
      return np.asarray(images)
  images = folder.decode_all(index, image_size)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.save(f, images)
  os.replace(tmp, path)
  return images


def tfds_split(name: str, split: str, data_dir: str | None = None,
               cache_dir: str | None = None) -> SplitArrays:
  """A whole TFDS split, in TFDS's stored order, from the cache if there.

  Raises:
    InputError: the split is not cached and TensorFlow is not installed, or
      TFDS refuses the name or split.
    MissingInputError: not cached, and TFDS has no data and cannot download.
  """
  key = hashlib.sha256(f'{name}|{split}|{data_dir}'.encode()).hexdigest()[:16]
  path = os.path.join(_cache_dir(cache_dir),
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
    return SplitArrays(cached['images'], cached['labels'].astype(np.int32),
                       int(cached['num_classes']))


def _cache_dir(cache_dir: str | None) -> str:
  return os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
