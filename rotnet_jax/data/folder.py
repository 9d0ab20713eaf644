"""Image-folder datasets: ``<root>/<split>/<class_name>/*.{jpg,jpeg,png}``.

Labels are class-folder indices in sorted name order (for the CIFAR-10 JPEG
copy this gives the usual ids). Files within a class are in natural name
order (``2.jpg`` before ``10.jpg``), which is the dataset order used for
"first K images per class" subsets.

This module lists and decodes files with PIL only (no TensorFlow): the
device-resident source decodes every file here, the tf.data pipeline takes
the file list and checks every file here once before training -- except
with ``augmentation='imagenet'`` (images of any size, ImageNet's 1.28
million files), where only empty files are refused up front (their sizes
come with the listing) and a file that fails to decode is named when the
pipeline meets it (:func:`describe_bad_file` says why).
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import re

import numpy as np
from PIL import Image

from rotnet_jax.data import image_check
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_IO_THREADS = 16


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The files of one split of an image folder.

  Attributes:
    root: the dataset root (holding one folder per split).
    split: split folder name, e.g. ``train``.
    paths: absolute file paths, class by class, natural name order.
    labels: int32 class index of every path.
    class_names: sorted class folder names; ``labels`` index into it.
    fingerprint: hash of the relative paths, sizes and modification times,
      to tell whether a cache of the decoded images is still valid.
    sizes: the size in bytes of every path.
  """
  root: str
  split: str
  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  fingerprint: str
  sizes: tuple[int, ...] = ()


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part
          for part in re.split(r'(\d+)', name)]


def _split_dir(root: str, split: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(root)), split)


def list_classes(root: str, split: str) -> tuple[str, ...]:
  """The sorted class folder names of `split` under `root`.

  Raises:
    MissingInputError: the split folder is missing.
    InputError: it has no class folders.
  """
  split_dir = _split_dir(root, split)
  if not os.path.isdir(split_dir):
    raise MissingInputError(
        f'image folder split {split!r} not found: {split_dir} does not exist. '
        f'Expected the layout <root>/{split}/<class_name>/*.jpg|*.png '
        f'(dataset={root!r}).')
  with _listing(split_dir):
    names = tuple(sorted(
        e.name for e in os.scandir(split_dir)
        if e.is_dir() and not e.name.startswith('.')))
  if not names:
    raise InputError(
        f'image folder {split_dir} has no class folders; expected '
        f'{split_dir}/<class_name>/*.jpg|*.png')
  return names


@contextlib.contextmanager
def _listing(folder: str):
  """Turns a file-system error while listing `folder` into an InputError.

  A symbolic-link loop, a folder without read permission or a file that
  vanishes while listing would otherwise end in a traceback.
  """
  try:
    yield
  except InputError:
    raise  # Already says what is wrong (MissingInputError is an OSError).
  except OSError as e:
    raise InputError(
        f'cannot list the image folder {folder}: {e.strerror or e} '
        f'({e.filename or folder}). Fix or remove that entry.') from e


def scan(root: str, split: str) -> FolderIndex:
  """Lists the images of `split` under `root`, failing clearly on a bad layout.

  Raises:
    MissingInputError: the split folder is missing.
    InputError: no class folders, a class folder without images, or an
      entry that cannot be read (a symbolic-link loop...).
  """
  split_dir = _split_dir(root, split)
  with _listing(split_dir):
    return _scan(root, split, split_dir)


def _scan(root: str, split: str, split_dir: str) -> FolderIndex:
  class_names = list_classes(root, split)
  paths, labels, stats, sizes = [], [], [], []
  for label, class_name in enumerate(class_names):
    class_dir = os.path.join(split_dir, class_name)
    entries = sorted(
        (e for e in os.scandir(class_dir)
         if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)),
        key=lambda e: _natural_key(e.name))
    if not entries:
      raise InputError(
          f'class folder {class_dir} has no images (looked for files ending '
          f'in {", ".join(IMAGE_EXTENSIONS)}); remove it or add images.')
    for entry in entries:
      stat = entry.stat()
      paths.append(entry.path)
      labels.append(label)
      sizes.append(stat.st_size)
      stats.append(f'{class_name}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}')
  fingerprint = hashlib.sha256('\n'.join(stats).encode()).hexdigest()[:16]
  return FolderIndex(root=os.path.dirname(split_dir), split=split,
                     paths=tuple(paths),
                     labels=np.asarray(labels, dtype=np.int32),
                     class_names=class_names, fingerprint=fingerprint,
                     sizes=tuple(sizes))


def _read(path: str, image_size: int) -> np.ndarray:
  """Decodes `path` to ``uint8 [S, S, 3]``, checking format and size."""
  try:
    with Image.open(path) as img:
      width, height = img.size
      image_check.check(f'image file {path}', image_size, height=height,
                        width=width, file_format=img.format or 'unknown')
      return np.asarray(img.convert('RGB'), np.uint8)
  except InputError:
    raise
  except Exception as e:  # PIL raises several types for unreadable files.
    raise InputError(f'cannot read image file {path}: {e}') from e


def describe_bad_file(path: str) -> str:
  """Why `path` cannot be used as an image, as a predicate for a message
  (``is empty (0 bytes)``, ``cannot be decoded: ...``).

  Called once, for a file the tf.data pipeline failed on (TensorFlow's
  error does not say why in terms of the file).
  """
  try:
    size = os.path.getsize(path)
    if not size:
      return 'is empty (0 bytes)'
    with Image.open(path) as img:
      if img.format not in image_check.SUPPORTED_FORMATS:
        return (f'is {img.format}, expected one of '
                f'{image_check.SUPPORTED_FORMATS}')
      img.load()
  except OSError as e:
    if isinstance(e, FileNotFoundError) or not os.path.exists(path):
      return 'cannot be read: it no longer exists'
    return f'cannot be decoded as JPEG or PNG ({e})'
  except Exception as e:  # pylint: disable=broad-except
    return f'cannot be decoded as JPEG or PNG ({e})'
  return 'cannot be decoded by TensorFlow (PIL reads it)'


def check_sizes(index: FolderIndex) -> None:
  """Raises InputError naming the first empty (0-byte) file of `index`.

  Free: the sizes were read when the folder was listed. The check for
  any-size images (``augmentation='imagenet'``), where decoding every file
  up front would take hours on ImageNet; other bad files are named when
  the pipeline meets them.
  """
  for path, size in zip(index.paths, index.sizes):
    if not size:
      raise InputError(f'image file {path} is empty (0 bytes): replace or '
                       'remove it')


def check_images(index: FolderIndex, image_size: int) -> None:
  """Decodes every file once: JPEG or PNG, `image_size` square, not broken.

  Run before training, so that a truncated or corrupt file stops the run
  with its name instead of failing inside the tf.data pipeline hours later
  (TensorFlow's decode error does not name the file). About 3 s for the
  60,000 CIFAR-10 JPEGs on 2 cores.

  Raises:
    InputError: naming the first bad file.
  """
  with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
    for _ in pool.map(lambda p: _read(p, image_size), index.paths):
      pass


def decode_all(index: FolderIndex, image_size: int) -> np.ndarray:
  """Decodes every image of `index` into ``uint8 [N, S, S, 3]``.

  Raises:
    InputError: naming the first file that cannot be read or has the wrong
      size.
  """
  images = np.empty((len(index.paths), image_size, image_size, 3), np.uint8)
  with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
    for i, pixels in enumerate(
        pool.map(lambda p: _read(p, image_size), index.paths)):
      images[i] = pixels
  return images
