"""TensorFlow Datasets access with clear errors. Imports TensorFlow.

Builders (prepared, downloading if needed), a split's labels, a whole split
as arrays (for the device pipeline's cache), and one process's share of a
split as a tf.data dataset (for the tf.data pipeline).
"""

import difflib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.workdir import filesystem

# The archives a dataset's manual download folder must hold, by TFDS name,
# as its builder looks for them (ImageNet cannot be downloaded by TFDS). At
# least these are needed: the train and validation splits of a run.
MANUAL_FILES = {
    'imagenet2012': ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'),
}

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


def manual_dir(builder) -> str:
  """Where a dataset TFDS cannot download (``imagenet2012``) is read from.

  TFDS's own default, ``<data_dir>/downloads/manual`` (``data_dir``: the
  config's, else TFDS's, ``~/tensorflow_datasets``): put the archives
  there, or prepare the dataset once with ``tfds build
  --manual_dir=...`` into ``data_dir``.
  """
  # A URL (gs://) stays one: run_files joins both kinds.
  return filesystem.join(str(builder.data_dir_root), 'downloads', 'manual')


def _check_manual_files(builder) -> None:
  """Raises MissingInputError naming the archives missing from the manual
  download folder of an unprepared dataset that needs one."""
  needed = MANUAL_FILES.get(builder.name)
  if not needed or builder.is_prepared():
    return
  folder = manual_dir(builder)
  missing = [f for f in needed
             if not filesystem.resolve(filesystem.join(folder, f)).is_file()]
  if missing:
    raise MissingInputError(
        f'TFDS dataset {builder.name!r} is not prepared in '
        f'{builder.data_dir} and must be downloaded by hand: its manual '
        f'download folder {folder} lacks {", ".join(missing)} (it needs '
        f'{", ".join(needed)}). Put them there (data_dir=... sets the '
        f'folder: <data_dir>/downloads/manual), pass data_dir= where the '
        'dataset is prepared, or pass an image folder as dataset=.')


def prepared_builder(name: str, data_dir: str | None):
  """Returns the TFDS builder of `name`, downloading the data if missing.

  In a multi-host run, process 0 prepares the data first and the others
  follow, so a shared ``data_dir`` is written once. A dataset TFDS cannot
  download is prepared from the archives in :func:`manual_dir`.

  Raises:
    InputError: `name` is not a TFDS dataset (with close matches).
    MissingInputError: the data is not in `data_dir` and could not be
      downloaded, or the archives of a manual download are missing.
  """
  builder = get_builder(name, data_dir)
  _check_manual_files(builder)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir(builder))
  try:
    parallel.first_process_then_others(
        lambda: builder.download_and_prepare(download_config=config),
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


def image_shape(builder) -> tuple[int | None, ...]:
  """``(height, width, channels)`` of the ``image`` feature (None: varies)."""
  return tuple(builder.info.features['image'].shape)


def num_classes(builder) -> int:
  """Classes of the dataset's ``label`` feature."""
  return builder.info.features['label'].num_classes


def load_as_arrays(name: str, split: str, data_dir: str | None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
  """Reads a whole split into ``(images uint8, labels int32, num_classes)``."""
  builder = prepared_builder(name, data_dir)
  check_split(builder, split)
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return (np.asarray(data['image'], np.uint8),
          np.asarray(data['label'], np.int32), num_classes(builder))


def _undecoded(builder, split):
  """`split` in stored order, image bytes left encoded (decoding is most
  of the cost of a pass)."""
  return builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()})


def read_labels(builder, split: str) -> np.ndarray:
  """The label of every example of `split`, ``int32 [N]``, in stored order.

  One pass over the records without decoding any image.
  """
  labels = _undecoded(builder, split).map(
      lambda x: x['label'], num_parallel_calls=tf.data.AUTOTUNE).batch(65536)
  return np.concatenate([np.zeros(0, np.int32)] + [
      np.asarray(batch, np.int32) for batch in tfds.as_numpy(labels)])


def has_original_order(builder) -> bool:
  """Whether the dataset's examples carry an ``id`` that numbers them in
  the order of the original release (CIFAR-10's ``train_16399``)."""
  return 'id' in builder.info.features


def original_order(builder, split: str) -> np.ndarray | None:
  """Stored positions of `split`'s examples, in the original release's order.

  TFDS stores CIFAR-10 shuffled; its ``id`` field (``train_NNNNN``) keeps
  the example's index in the original files (data_batch_1..5). One pass
  without decoding any image.

  Returns:
    ``order`` with ``order[i]`` the stored position of original example
    ``i``; None when the dataset has no ``id`` field.
  """
  if not has_original_order(builder):
    return None
  ids = _undecoded(builder, split).map(
      lambda x: x['id'], num_parallel_calls=tf.data.AUTOTUNE).batch(65536)
  names = [name.decode() if isinstance(name, bytes) else str(name)
           for batch in tfds.as_numpy(ids) for name in batch]
  numbers = []
  for name in names:
    digits = name.rsplit('_', 1)[-1]
    if not digits.isdigit():
      return None  # Not numbered: keep the stored order.
    numbers.append(int(digits))
  return np.argsort(np.asarray(numbers, np.int64), kind='stable')


def process_examples(builder, split: str, *, process: int, processes: int,
                     drop_remainder: bool, keep: np.ndarray | None = None,
                     encoded: bool = False) -> tuple[tf.data.Dataset, int]:
  """This process's share of `split` as ``{'image', 'label'}`` examples.

  Decoded examples are cached in memory after the first pass, in stored
  order; encoded ones are read from disk each pass (ImageNet's do not fit).

  Args:
    builder: a prepared builder.
    split: split name.
    process: this process's index.
    processes: number of processes.
    drop_remainder: give every process exactly ``N // processes`` examples
      (training); if False the first ``N % processes`` processes get one
      more (evaluation: every example is seen).
    keep: increasing indices of the examples of `split` to read (a training
      subset); None: all.
    encoded: leave ``image`` as the encoded bytes (decoded and augmented
      together by ``imagenet_preprocess``) and do not cache.

  Returns:
    ``(dataset, number of its examples)``.
  """
  if keep is None:
    # A contiguous shard per process: each reads only its own records.
    local_split = tfds.split_for_jax_process(
        split, process_index=process, process_count=processes,
        drop_remainder=drop_remainder)
    decoders = {'image': tfds.decode.SkipDecoding()} if encoded else None
    examples = builder.as_dataset(
        split=local_split, shuffle_files=False, decoders=decoders).map(
            lambda x: {'image': x['image'], 'label': x['label']},
            num_parallel_calls=tf.data.AUTOTUNE)
    if not encoded:
      examples = examples.cache()
    return examples, builder.info.splits[local_split].num_examples
  # A subset is dealt out by rank, the r-th kept example to process
  # r % processes, not by contiguous shards: kept examples may cluster in
  # one part of the split (the first K of each class of a split in mixed
  # class order all come early), which would leave other processes with
  # none. Each process reads every record once but decodes only its own
  # images.
  share = keep[process::processes]
  if drop_remainder:
    share = share[:len(keep) // processes]
  mine = np.zeros(builder.info.splits[split].num_examples, bool)
  mine[share] = True
  image_feature = builder.info.features['image']
  decode = (lambda image: image) if encoded else image_feature.decode_example
  examples = _undecoded(builder, split).enumerate().filter(
      lambda i, x: tf.gather(mine, i)).map(
          lambda i, x: {'image': decode(x['image']), 'label': x['label']},
          num_parallel_calls=tf.data.AUTOTUNE)
  return (examples if encoded else examples.cache()), len(share)
