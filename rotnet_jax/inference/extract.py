"""Features of a whole dataset split, from any trained network, as ``.npz``.

    python -m rotnet_jax.extract --pretrained=/tmp/rotnet_cifar \
        --dataset=cifar10 --split=test --blocks=conv2 --pool --out=feats.npz

``--pretrained`` is anything ``rotnet_jax.load`` takes (a workdir, with
``--step``; an exported ``.safetensors`` file; an official PyTorch file).
The split is read by the package's own data layer (bundled ``digits``, an
image folder, or a TFDS name), in stored order (TFDS's own for a TFDS
dataset), at the network's image size. The file holds one array per
block (``float32 [N, h, w, C]`` NHWC, or ``[N, C]`` with ``--pool``,
global average pooling), ``labels``
(``int32 [N]``), ``blocks`` (the block names) and ``class_names`` (empty
when the dataset does not name its classes). It is written to a
temporary file and renamed: an interrupted run leaves no partial output.
It is not written inside a workdir a run is training in (checked before
and after the extraction).
"""

import time

import numpy as np
from absl import logging

from rotnet_jax import config_schema
from rotnet_jax import inference
from rotnet_jax.data import datasets
from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock

# Images per progress step: features are computed (and logged) this many
# images at a time.
_CHUNK = 4096


def check_output(out: str, *, overwrite: bool) -> str:
  """The absolute path `out` if the ``.npz`` may be written there (see
  ``filesystem.check_output_file``)."""
  return filesystem.check_output_file(out, what='--out', suffix='.npz',
                                     overwrite=overwrite)


def open_images(dataset: str, split: str, image_size: int, *,
                data_dir: str | None = None, cache_dir: str | None = None
                ) -> datasets.Split:
  """Every image of `split` of `dataset`, decoded, in stored order.

  Labels are those a run sees: an image folder's split must have the class
  folders of its ``train`` split, as in training.
  """
  config = config_schema.defaults()
  config.dataset = dataset
  config.data_dir = data_dir
  config.cache_dir = cache_dir
  config.image_size = image_size
  return datasets.open_split(config, split, train=False, decoded=True)


def extract(model: inference.Model, images: np.ndarray, blocks, *,
            pool: bool = False, batch_size: int = 256
            ) -> dict[str, np.ndarray]:
  """``{block: features}`` of `images`, logging progress with an ETA."""
  parts = []
  start = time.perf_counter()
  total = len(images)
  for begin in range(0, total, _CHUNK):
    parts.append(model.features(images[begin:begin + _CHUNK], blocks,
                                pool=pool, batch_size=batch_size))
    done = min(begin + _CHUNK, total)
    rate = done / max(time.perf_counter() - start, 1e-9)
    logging.info('features of %d/%d images | %.0f img/s | ETA %ds', done,
                 total, rate, (total - done) / rate)
  return {b: np.concatenate([p[b] for p in parts]) for b in parts[0]}


def extract_split(*, pretrained: str, dataset: str, split: str, blocks,
                  out: str, step: int = 0, pool: bool = False,
                  batch_size: int = 256, data_dir: str | None = None,
                  cache_dir: str | None = None, overwrite: bool = False
                  ) -> dict[str, object]:
  """Writes the features of `split` to `out`; returns a summary.

  Raises:
    InputError, MissingInputError: a bad path, dataset, split, block,
      batch size or output, or an output inside a workdir a run is
      training in (before anything is written).
  """
  full = check_output(out, overwrite=overwrite)
  workdir_lock.check_not_inside_locked(full, '--out')
  if batch_size < 1:
    raise InputError(f'--batch_size={batch_size}: must be positive')
  model = inference.load(pretrained, step)
  blocks = tuple(blocks) or model.block_names
  model.check_blocks(blocks)
  opened = open_images(dataset, split, model.spec['image_size'],
                       data_dir=data_dir, cache_dir=cache_dir)
  start = time.perf_counter()
  features = extract(model, opened.images, blocks, pool=pool,
                     batch_size=batch_size)
  seconds = time.perf_counter() - start
  contents = dict(features, labels=np.asarray(opened.labels, np.int32),
                  blocks=np.asarray(blocks),
                  class_names=np.asarray(opened.class_names, dtype=str))

  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, **contents)

  # Again: the extraction took minutes, a run may have started there.
  workdir_lock.check_not_inside_locked(full, '--out')
  try:
    filesystem.write_file_atomically(full, write)
  except OSError as e:
    raise InputError(f'cannot write --out={out!r}: {first_line(e)}') from e
  return {'out': full, 'images': len(opened.images), 'seconds': seconds,
          'images_per_sec': len(opened.images) / max(seconds, 1e-9),
          'shapes': {b: v.shape for b, v in features.items()}}
