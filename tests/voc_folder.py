"""Writes a tiny PASCAL VOC devkit for tests (PIL and NumPy only), and a
TFDS ``voc/2007`` prepared from it (needs tensorflow_datasets).

``<root>/VOCdevkit/VOC2007``: JPEGs of a few sizes, devkit XML annotations
with objects of several classes per image, some ``difficult``, and
``ImageSets/Main/{trainval,train,val,test}.txt``. ``<root>/VOCdevkit/VOC2012``:
JPEGs with ``SegmentationClass`` palette PNGs (rectangles of classes inside
255 borders, as VOC's masks) and ``ImageSets/Segmentation/{train,val}.txt``.
Writing it takes a fraction of a second.
"""

import os
from unittest import mock

import numpy as np
from PIL import Image

from rotnet_jax.data import voc

# Images of VOC2012 segmentation per split.
SEGMENTATION_IMAGES = {'train': 6, 'val': 5}
_POSE = 'Unspecified'


def palette() -> np.ndarray:
  """VOC's colour map, ``uint8 [256, 3]``: label k's colour spreads the
  bits of k over the three channels, high bits first (255 is near white)."""
  colours = np.zeros((256, 3), np.uint8)
  for label in range(256):
    value, red, green, blue = label, 0, 0, 0
    for bit in range(8):
      red |= ((value >> 0) & 1) << (7 - bit)
      green |= ((value >> 1) & 1) << (7 - bit)
      blue |= ((value >> 2) & 1) << (7 - bit)
      value >>= 3
    colours[label] = red, green, blue
  return colours


def image_sizes(image_size=(48, 64)) -> list[tuple[int, int]]:
  """The ``(height, width)`` sizes the images cycle through."""
  height, width = image_size
  return [(height, width), (width, height), (height + 10, width - 6),
          (height - 8, width + 12)]


def planned_objects(images_per_class: int = 2) -> dict:
  """``{id: [(class index, difficult), ...]}`` of the VOC2007 images.

  Image ``k`` shows class ``k // images_per_class`` (not difficult) and
  class ``c + 1`` (difficult every third image: its only object of that
  class); every fifth image also has a difficult object of its main class
  (still positive), and every seventh a second, non-difficult object of
  the second class.
  """
  objects = {}
  for k in range(len(voc.CLASSES) * images_per_class):
    main = k // images_per_class
    second = (main + 1) % len(voc.CLASSES)
    listed = [(main, False), (second, k % 3 == 0)]
    if k % 5 == 0:
      listed.append((main, True))
    if k % 7 == 0:
      listed.append((second, False))
    objects[f'{k + 1:06d}'] = listed
  return objects


def _pixels(rng, height, width):
  """A smooth colour gradient with some noise (compresses like a photo)."""
  ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
  xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
  a, b, c = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
  image = a * (1 - ys) * (1 - xs) + b * ys + c * xs * (1 - ys)
  image = image + rng.normal(0, 8, (height, width, 1)).astype(np.float32)
  return np.clip(image, 0, 255).astype(np.uint8)


def annotation_xml(filename: str, height: int, width: int,
                   objects) -> str:
  """A devkit annotation: `objects` are ``(class name, difficult)``,
  each given a box inside the image."""
  parts = [f'<annotation><folder>VOC2007</folder>'
           f'<filename>{filename}</filename><size><width>{width}</width>'
           f'<height>{height}</height><depth>3</depth></size>']
  for number, (name, difficult) in enumerate(objects):
    x0, y0 = 1 + number, 2 + number
    parts.append(
        f'<object><name>{name}</name><pose>{_POSE}</pose>'
        f'<truncated>0</truncated><difficult>{int(difficult)}</difficult>'
        f'<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>'
        f'<xmax>{width - 1}</xmax><ymax>{height - 1}</ymax></bndbox>'
        '</object>')
  parts.append('</annotation>')
  return '\n'.join(parts)


def _write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{line}\n' for line in lines))


def write_vocdevkit(root: str, *, images_per_class: int = 2, seed: int = 0,
                    image_size=(48, 64)) -> str:
  """Writes ``<root>/VOCdevkit``; returns its path.

  Args:
    root: folder to write into (created).
    images_per_class: VOC2007 images per main class (20 classes).
    seed: image contents and mask rectangles.
    image_size: ``(height, width)`` the sizes vary around.

  VOC2007: odd-numbered images are ``trainval`` (its first half ``train``,
  the rest ``val``), even-numbered ones ``test``; objects as
  :func:`planned_objects`. VOC2012: :data:`SEGMENTATION_IMAGES` images per
  split, each mask a background with two class rectangles inside 2-pixel
  255 borders, the image the masks' palette colours plus noise.
  """
  rng = np.random.default_rng(seed)
  devkit = os.path.join(root, 'VOCdevkit')
  sizes = image_sizes(image_size)
  year = os.path.join(devkit, 'VOC2007')
  for folder in ('JPEGImages', 'Annotations'):
    os.makedirs(os.path.join(year, folder), exist_ok=True)
  splits = {'trainval': [], 'test': []}
  for k, (image_id, objects) in enumerate(planned_objects(
      images_per_class).items()):
    height, width = sizes[k % len(sizes)]
    Image.fromarray(_pixels(rng, height, width)).save(
        os.path.join(year, 'JPEGImages', f'{image_id}.jpg'), quality=90)
    named = [(voc.CLASSES[label], difficult) for label, difficult in objects]
    with open(os.path.join(year, 'Annotations', f'{image_id}.xml'),
              'w') as f:
      f.write(annotation_xml(f'{image_id}.jpg', height, width, named))
    splits['trainval' if k % 2 == 0 else 'test'].append(image_id)
  half = len(splits['trainval']) // 2
  splits['train'] = splits['trainval'][:half]
  splits['val'] = splits['trainval'][half:]
  for split, ids in splits.items():
    _write_lines(os.path.join(year, 'ImageSets', 'Main', f'{split}.txt'),
                 ids)
  _write_segmentation(os.path.join(devkit, 'VOC2012'), rng, sizes)
  return devkit


def segmentation_labels(rng, height, width) -> np.ndarray:
  """Background, two rectangles of random classes, 255 borders."""
  labels = np.zeros((height, width), np.uint8)
  for _ in range(2):
    y0, x0 = (int(rng.integers(0, s // 2)) for s in (height, width))
    y1 = int(rng.integers(y0 + 6, height + 1))
    x1 = int(rng.integers(x0 + 6, width + 1))
    labels[y0:y1, x0:x1] = voc.IGNORE_LABEL
    labels[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = rng.integers(
        1, len(voc.SEGMENTATION_CLASSES))
  return labels


def write_mask(path: str, labels: np.ndarray) -> None:
  """Writes `labels` as a palette PNG (VOC's colours)."""
  mask = Image.fromarray(labels, mode='P')
  mask.putpalette(palette().ravel().tolist())
  mask.save(path)


def _write_segmentation(year, rng, sizes):
  for folder in ('JPEGImages', 'SegmentationClass'):
    os.makedirs(os.path.join(year, folder), exist_ok=True)
  number = 0
  for split, count in SEGMENTATION_IMAGES.items():
    ids = []
    for _ in range(count):
      number += 1
      image_id = f'2012_{number:06d}'
      height, width = sizes[number % len(sizes)]
      labels = segmentation_labels(rng, height, width)
      pixels = palette()[labels].astype(np.float32) + rng.normal(
          0, 4, (height, width, 3))
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          os.path.join(year, 'JPEGImages', f'{image_id}.jpg'), quality=90)
      write_mask(os.path.join(year, 'SegmentationClass', f'{image_id}.png'),
                 labels)
      ids.append(image_id)
    _write_lines(os.path.join(year, 'ImageSets', 'Segmentation',
                              f'{split}.txt'), ids)


def write_tfds_voc2007(devkit: str, data_dir: str) -> str:
  """Prepares TFDS ``voc/2007`` in `data_dir` from the devkit at `devkit`.

  TFDS's own VOC builder reads the folder its download would unpack
  (``<dir>/VOCdevkit/VOC2007/...``, for both archives); the download is
  replaced by that folder, so nothing is fetched. Returns `data_dir`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  unpacked = os.path.dirname(os.path.abspath(devkit))

  def download_and_extract(self, urls):
    del self
    return {key: unpacked for key in urls}

  with mock.patch.object(tfds.download.DownloadManager,
                         'download_and_extract', download_and_extract):
    tfds.builder('voc/2007', data_dir=data_dir).download_and_prepare()
  return data_dir
