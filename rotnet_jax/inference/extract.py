"""Features of a whole dataset split, from any trained network, as ``.npz``.

    python -m rotnet_jax.extract --pretrained=/tmp/rotnet_cifar \
        --dataset=cifar10 --split=test --blocks=conv2 --pool --out=feats.npz
    python -m rotnet_jax.extract --pretrained=W --dataset=~/VOCdevkit \
        --split=trainval --blocks= --pool=svm --out=trainval.npz

``--pretrained`` is anything ``rotnet_jax.load`` takes (a workdir, with
``--step``; an exported ``.safetensors`` file; an official PyTorch file).
The split is read by the package's own data layer (bundled ``digits``, an
image folder, or a TFDS name), in stored order (TFDS's own for a TFDS
dataset), at the network's image size. The file holds one array per
block: ``float32 [N, h, w, C]`` NHWC with ``--pool=none`` (the default),
``[N, C]`` with ``--pool=global`` (or ``--pool``: global average
pooling), ``[N, s, s, C]`` with ``--pool=svm`` (average pooling to about
9,216 values, ``inference.model.svm_pool_sides``); ``labels``
(``int32 [N]``), ``blocks`` (the block names) and ``class_names`` (empty
when the dataset does not name its classes).

PASCAL VOC classification (a VOCdevkit or ``VOC2007`` folder, or TFDS
``voc/2007``; ``data/voc.py``) gives ``targets`` (``int8 [N, 20]``: 1
present, 0 only difficult, -1 absent), ``class_names`` (the 20 classes)
and ``ids`` (the image ids) instead of ``labels``, in the split file's
order. Its images of any size are fed as Goyal et al.'s linear-SVM
benchmark feeds them (VISSL's ``eval_alexnet_8gpu_transfer_voc07_svm``:
``Resize(256)`` then ``Resize((224, 224))``): the shorter side resized to
``round(S * 256 / 224)``, then the whole image to ``S x S`` (aspect ratio
not kept, nothing cropped), both bilinear with PIL, for the network's
image size ``S``; ``python -m rotnet_jax.svm`` reads these files.

The file is written to a temporary file and renamed: an interrupted run
leaves no partial output. It is not written inside a workdir a run is
training in (checked before and after the extraction).
"""

import concurrent.futures
import io
import time

import numpy as np
from absl import logging
from PIL import Image

from rotnet_jax import config_schema
from rotnet_jax import inference
from rotnet_jax.data import datasets
from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line
from rotnet_jax.inference import model as model_lib
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock

# Images per progress step: features are computed (and logged) this many
# images at a time (VOC's are decoded a step at a time: 4,096 images of
# 224 x 224 are 600 MB).
_CHUNK = 4096
# VISSL's VOC07 SVM transform resizes the shorter side to 256 for a
# 224-pixel network, then the whole image to 224 x 224.
_SVM_RESIZE_RATIO = 256 / 224
_DECODE_THREADS = 8


def svm_resize(image: Image.Image, size: int) -> np.ndarray:
  """`image` as the linear-SVM benchmark feeds it: ``uint8 [S, S, 3]``.

  The shorter side to ``round(size * 256 / 224)`` (the longer one
  ``int(short * long / shorter)``, as torchvision's ``Resize``), then the
  whole image to ``size x size``, both PIL bilinear.
  """
  image = image.convert('RGB')
  width, height = image.size
  short = round(size * _SVM_RESIZE_RATIO)
  if width <= height:
    scaled = (short, int(short * height / width))
  else:
    scaled = (int(short * width / height), short)
  image = image.resize(scaled, Image.BILINEAR)
  return np.asarray(image.resize((size, size), Image.BILINEAR), np.uint8)


class VOCImages:
  """A VOC classification split's images, decoded and resized
  (:func:`svm_resize`) a slice at a time: ``images[a:b]`` is ``uint8
  [b - a, S, S, 3]``."""

  def __init__(self, split: voc.ClassificationSplit, image_size: int):
    self.split = split
    self.image_size = image_size

  def __len__(self) -> int:
    return len(self.split)

  def _decode(self, index: int) -> np.ndarray:
    try:
      with Image.open(io.BytesIO(self.split.encoded(index))) as image:
        return svm_resize(image, self.image_size)
    except (OSError, SyntaxError, ValueError) as e:
      raise InputError(f'cannot decode {self.split.describe(index)} '
                       f'({first_line(e)})') from e

  def __getitem__(self, window: slice) -> np.ndarray:
    indices = range(len(self))[window]
    # PIL decodes and resizes without the GIL.
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
      images = list(pool.map(self._decode, indices))
    return np.stack(images) if images else np.zeros(
        (0, self.image_size, self.image_size, 3), np.uint8)


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


def extract(model: inference.Model, images, blocks, *,
            pool: bool | str = False, batch_size: int = 256
            ) -> dict[str, np.ndarray]:
  """``{block: features}`` of `images` (an array, or :class:`VOCImages`),
  logging progress with an ETA; `pool` as ``Model.features``'s."""
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
                  out: str, step: int = 0, pool: bool | str = False,
                  batch_size: int = 256, data_dir: str | None = None,
                  cache_dir: str | None = None, overwrite: bool = False
                  ) -> dict[str, object]:
  """Writes the features of `split` to `out`; returns a summary.

  `pool` is ``'none'``, ``'global'`` or ``'svm'`` (``Model.features``;
  True and False mean ``'global'`` and ``'none'``).

  Raises:
    InputError, MissingInputError: a bad path, dataset, split, block,
      pool, batch size or output, or an output inside a workdir a run is
      training in (before anything is written).
  """
  full = check_output(out, overwrite=overwrite)
  workdir_lock.check_not_inside_locked(full, '--out')
  if batch_size < 1:
    raise InputError(f'--batch_size={batch_size}: must be positive')
  pool = model_lib.pool_mode(pool)
  model = inference.load(pretrained, step)
  blocks = tuple(blocks) or model.block_names
  model.check_blocks(blocks)
  if voc.is_voc(dataset):
    opened = voc.open_classification(dataset, split, data_dir=data_dir)
    images = VOCImages(opened, model.spec['image_size'])
    about = dict(targets=np.asarray(opened.targets, np.int8),
                 class_names=np.asarray(voc.CLASSES, dtype=str),
                 ids=np.asarray(opened.ids, dtype=str))
  else:
    opened = open_images(dataset, split, model.spec['image_size'],
                         data_dir=data_dir, cache_dir=cache_dir)
    images = opened.images
    about = dict(labels=np.asarray(opened.labels, np.int32),
                 class_names=np.asarray(opened.class_names, dtype=str))
  start = time.perf_counter()
  features = extract(model, images, blocks, pool=pool,
                     batch_size=batch_size)
  seconds = time.perf_counter() - start
  contents = dict(features, blocks=np.asarray(blocks), **about)

  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, **contents)

  # Again: the extraction took minutes, a run may have started there.
  workdir_lock.check_not_inside_locked(full, '--out')
  try:
    filesystem.write_file_atomically(full, write)
  except OSError as e:
    raise InputError(f'cannot write --out={out!r}: {first_line(e)}') from e
  return {'out': full, 'images': len(images), 'seconds': seconds,
          'images_per_sec': len(images) / max(seconds, 1e-9),
          'shapes': {b: v.shape for b, v in features.items()}}
