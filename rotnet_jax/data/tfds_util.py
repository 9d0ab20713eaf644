"""TensorFlow Datasets access with clear errors. Imports TensorFlow."""

import difflib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError

# The accelerators belong to JAX: keep TensorFlow (used only for input
# pipelines) off the GPUs so it does not reserve their memory.
tf.config.set_visible_devices([], 'GPU')


def get_builder(name: str, data_dir: str | None):
  """Returns the TFDS builder of `name` (nothing is downloaded yet).

  Raises:
    InputError: `name` is not a TFDS dataset (with close matches).
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    close = difflib.get_close_matches(name.split(':')[0].split('/')[0],
                                      tfds.list_builders(), n=5)
    raise InputError(
        f'dataset={name!r} is neither "digits", an existing image folder, nor '
        f'a TFDS dataset name. Close TFDS names: {close or "none"}. For an '
        f'image folder pass its path (<root>/{{train,test}}/<class>/*.jpg).'
    ) from e
  return builder


def prepared_builder(name: str, data_dir: str | None):
  """Returns the TFDS builder of `name`, downloading the data if missing.

  In a multi-host run, process 0 prepares the data first and the others
  follow, so a shared ``data_dir`` is written once.

  Raises:
    InputError: `name` is not a TFDS dataset (with close matches).
    MissingInputError: the data is not in `data_dir` and could not be
      downloaded.
  """
  builder = get_builder(name, data_dir)
  try:
    parallel.first_process_then_others(builder.download_and_prepare,
                                       f'tfds_prepare_{name}')
  except Exception as e:
    raise MissingInputError(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir} and '
        f'could not be downloaded ({type(e).__name__}: {e}). Without a '
        f'network, pass data_dir= where it was prepared, or an image folder '
        f'as dataset=.') from e
  return builder


def check_split(builder, split: str) -> None:
  """Raises InputError if the builder has no split named `split`."""
  if split not in builder.info.splits:
    raise InputError(f'TFDS dataset {builder.name!r} has splits '
                     f'{sorted(builder.info.splits)}, not {split!r}')


def check_image_shape(builder, image_size: int) -> None:
  """Raises InputError unless the dataset's images are `image_size` RGB."""
  shape = tuple(builder.info.features['image'].shape)
  if shape != (image_size, image_size, 3):
    raise InputError(
        f'TFDS dataset {builder.name!r} has images of shape {shape}, but '
        f'config.image_size={image_size} needs ({image_size}, {image_size}, '
        '3)')


def num_classes(builder) -> int:
  return builder.info.features['label'].num_classes


def load_as_arrays(name: str, split: str, data_dir: str | None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
  """Reads a whole split into ``(images uint8, labels int32, num_classes)``."""
  builder = prepared_builder(name, data_dir)
  check_split(builder, split)
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return (np.asarray(data['image'], np.uint8),
          np.asarray(data['label'], np.int32), num_classes(builder))
