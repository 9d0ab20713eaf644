"""PASCAL VOC: classification targets and segmentation masks, checked.

Two kinds of dataset name reach here (:func:`is_voc`):

* a folder: a ``VOCdevkit`` (holding ``VOC2007/`` and/or ``VOC2012/``) or
  one ``VOC20xx`` folder itself, as the devkit's archives unpack.
  Classification reads ``VOC2007/`` of a devkit::

    VOC2007/JPEGImages/<id>.jpg
    VOC2007/Annotations/<id>.xml
    VOC2007/ImageSets/Main/{trainval,test,train,val}.txt

  segmentation ``VOC2012/``::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png   (palette PNG: index = class)
    VOC2012/ImageSets/Segmentation/{train,val}.txt

  Detection reads the same ``VOC2007/`` files, each object's box too
  (:func:`open_detection`).

* a TFDS name, ``voc/2007`` (``voc/2012``, ``voc``): classification only,
  read through TFDS (imported here only then, with TensorFlow); TFDS keeps
  no segmentation masks.

A split is checked when it is opened, before anything is written: missing
folders, split files, annotations and images, unknown class names, masks
whose size differs from their image's or that hold other values than the
21 classes and 255, boxes that are empty or leave their image are each an
``InputError`` of one line naming the file (and the object).

Classification targets follow the devkit (its ``<class>_<split>.txt``
files): for each class, 1 if the image has an object of the class not
marked ``difficult``, 0 (ignored by the metric) if all its objects of the
class are ``difficult``, -1 if it has none.

Images stay encoded (``encoded(index)``: the JPEG file's bytes); the
source (``voc_source``) decodes them with PIL. A TFDS split holds its
encoded images in memory (VOC2007 trainval: about 450 MB).
"""

import concurrent.futures
import dataclasses
import os
import re
import xml.etree.ElementTree

import numpy as np
from PIL import Image

from rotnet_jax import boxes as boxes_lib
from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line
from rotnet_jax.errors import MissingInputError

# The devkit's class order (VOCdevkit/VOCcode/VOCinit.m); TFDS uses it too.
CLASSES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
    'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
# Label k of a SegmentationClass PNG; 0 is background.
SEGMENTATION_CLASSES = ('background',) + CLASSES
# Segmentation pixels not scored: object borders (and our padding).
IGNORE_LABEL = 255
# Classification target values, the devkit's convention.
POSITIVE, IGNORED, NEGATIVE = 1, 0, -1

CLASSIFICATION_SPLITS = ('trainval', 'test', 'train', 'val')
DETECTION_SPLITS = CLASSIFICATION_SPLITS
SEGMENTATION_SPLITS = ('train', 'val')
# The TFDS splits each classification split is made of.
_TFDS_SPLITS = {'trainval': ('train', 'validation'), 'test': ('test',),
                'train': ('train',), 'val': ('validation',)}
_TFDS_NAMES = ('voc', 'voc/2007', 'voc/2012')
_YEAR_FOLDER = re.compile(r'VOC20\d\d')
_CLASSIFICATION_LAYOUT = ('VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, '
                          'Annotations/<id>.xml, ImageSets/Main/<split>.txt}')
_SEGMENTATION_LAYOUT = ('VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, '
                        'SegmentationClass/<id>.png, '
                        'ImageSets/Segmentation/<split>.txt}')
# Values of a mask that are not a class label nor IGNORE_LABEL, by value.
_BAD_MASK_VALUES = np.ones(256, bool)
_BAD_MASK_VALUES[:len(SEGMENTATION_CLASSES)] = False
_BAD_MASK_VALUES[IGNORE_LABEL] = False
_IO_THREADS = 16
_MAX_SHOWN = 10


def _path(dataset: str) -> str:
  return os.path.abspath(os.path.expanduser(dataset))


def _is_folder_name(dataset: str) -> bool:
  """Read as a folder (as ``datasets.dataset_kind`` decides): a path-like
  name or an existing directory."""
  return dataset.startswith(('/', '.', '~')) or os.path.isdir(dataset)


def _is_tfds_name(dataset: str) -> bool:
  return (not _is_folder_name(dataset) and
          dataset.split(':')[0] in _TFDS_NAMES)


def is_voc(dataset: str) -> bool:
  """Whether `dataset` is PASCAL VOC: a TFDS name ``voc/2007``,
  ``voc/2012`` or ``voc`` (a version ``:5.0.0`` may follow), a VOCdevkit
  folder (holding ``VOC2007/`` or ``VOC2012/``) or a ``VOC20xx`` folder."""
  if _is_tfds_name(dataset):
    return True
  path = _path(dataset)
  if not os.path.isdir(path):
    return False
  return bool(_YEAR_FOLDER.fullmatch(os.path.basename(path)) or any(
      os.path.isdir(os.path.join(path, year))
      for year in ('VOC2007', 'VOC2012')))


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationSplit:
  """One split of VOC classification, checked.

  Attributes:
    dataset: the dataset name or folder it was opened from.
    split: the split's name.
    ids: image ids (``'000005'``) in the split file's order (a TFDS split:
      sorted, which is the devkit files' order).
    targets: ``int8 [N, 20]``: :data:`POSITIVE`, :data:`IGNORED` (only
      ``difficult`` objects of the class) or :data:`NEGATIVE`, columns in
      :data:`CLASSES` order.
    paths: the image file of every id (a folder); empty for TFDS.
    blobs: the encoded image of every id held in memory (TFDS); empty for
      a folder.
  """
  dataset: str
  split: str
  ids: tuple[str, ...]
  targets: np.ndarray
  paths: tuple[str, ...] = ()
  blobs: tuple[bytes, ...] = ()

  def encoded(self, index: int) -> bytes:
    """The image of example `index` as its file's bytes (JPEG)."""
    if self.blobs:
      return self.blobs[index]
    with open(self.paths[index], 'rb') as f:
      return f.read()

  def describe(self, index: int) -> str:
    """Names example `index`'s image in a message."""
    if self.paths:
      return f'image file {self.paths[index]}'
    return (f'image {self.ids[index]!r} of {self.dataset!r} split '
            f'{self.split!r}')

  def __len__(self) -> int:
    return len(self.ids)


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationSplit:
  """One split of VOC segmentation, checked (a folder only).

  Attributes:
    dataset: the folder it was opened from.
    split: the split's name.
    ids: image ids in the split file's order.
    paths: the JPEG file of every id.
    mask_paths: the ``SegmentationClass`` PNG of every id.
  """
  dataset: str
  split: str
  ids: tuple[str, ...]
  paths: tuple[str, ...] = ()
  mask_paths: tuple[str, ...] = ()

  def encoded(self, index: int) -> bytes:
    """The image of example `index` as its file's bytes (JPEG)."""
    with open(self.paths[index], 'rb') as f:
      return f.read()

  def mask(self, index: int) -> np.ndarray:
    """The labels of example `index`, ``uint8 [H, W]``: 0..20 and 255.

    The PNG's palette indices (VOC stores labels as indices into a colour
    palette; the colours themselves are only for viewing).
    """
    return _read_mask(self.mask_paths[index])

  def describe(self, index: int) -> str:
    """Names example `index`'s image in a message."""
    return f'image file {self.paths[index]}'

  def __len__(self) -> int:
    return len(self.ids)


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionSplit:
  """One split of VOC2007 detection, checked (a folder only).

  Boxes are ``(x1, y1, x2, y2)`` in 0-based, inclusive pixel indices
  (``rotnet_jax.boxes``): the devkit's 1-based ``<bndbox>`` minus 1.

  Attributes:
    dataset: the folder it was opened from.
    split: the split's name.
    year_dir: the ``VOC2007`` folder (proposal files are cached beside it).
    ids: image ids in the split file's order.
    paths: the JPEG file of every id.
    sizes: ``int32 [N, 2]``, each image's ``(height, width)``.
    boxes: per image, ``float32 [G, 4]``, its objects' boxes.
    labels: per image, ``int32 [G]``, their classes (:data:`CLASSES`).
    difficult: per image, ``bool [G]``, their ``difficult`` flags.
  """
  dataset: str
  split: str
  year_dir: str
  ids: tuple[str, ...]
  paths: tuple[str, ...]
  sizes: np.ndarray
  boxes: tuple[np.ndarray, ...]
  labels: tuple[np.ndarray, ...]
  difficult: tuple[np.ndarray, ...]

  def encoded(self, index: int) -> bytes:
    """The image of example `index` as its file's bytes (JPEG)."""
    with open(self.paths[index], 'rb') as f:
      return f.read()

  def describe(self, index: int) -> str:
    """Names example `index`'s image in a message."""
    return f'image file {self.paths[index]}'

  def __len__(self) -> int:
    return len(self.ids)


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One devkit XML file, read.

  Attributes:
    labels: each object's class index.
    difficult: each object's ``difficult`` flag.
    boxes: ``float32 [G, 4]``, each object's box (0-based, inclusive), or
      None where an object has no complete ``<bndbox>``.
  """
  labels: tuple[int, ...]
  difficult: tuple[bool, ...]
  boxes: np.ndarray | None


def targets_of(objects) -> np.ndarray:
  """The devkit's target of one image, ``int8 [20]``.

  Args:
    objects: ``(class index, difficult)`` of each annotated object.

  Returns:
    Per class: 1 if some object of it is not difficult, 0 if all its
    objects are difficult, -1 if there is none.
  """
  targets = np.full(len(CLASSES), NEGATIVE, np.int8)
  for label, difficult in objects:
    if not difficult:
      targets[label] = POSITIVE
    elif targets[label] == NEGATIVE:
      targets[label] = IGNORED
  return targets


def read_annotation(path: str) -> list[tuple[int, bool]]:
  """``(class index, difficult)`` of every object of a devkit XML file.

  Raises:
    MissingInputError: the file does not exist.
    InputError: it is not XML, an object has no name, names a class not in
      :data:`CLASSES`, or has a ``difficult`` other than 0 or 1.
  """
  annotation = read_objects(path)
  return list(zip(annotation.labels, annotation.difficult))


def read_objects(path: str) -> Annotation:
  """Every object of a devkit XML file: class, ``difficult`` and box.

  Raises:
    MissingInputError: the file does not exist.
    InputError: it is not XML, an object has no name, names a class not in
      :data:`CLASSES`, or has a ``difficult`` other than 0 or 1, or a
      ``<bndbox>`` coordinate that is not a number.
  """
  try:
    root = xml.etree.ElementTree.parse(path).getroot()
  except FileNotFoundError as e:
    raise MissingInputError(
        f'annotation file {path} does not exist (expected one '
        f'Annotations/<id>.xml per listed id: {_CLASSIFICATION_LAYOUT})'
    ) from e
  except (xml.etree.ElementTree.ParseError, OSError) as e:
    raise InputError(f'annotation file {path} is not readable XML '
                     f'({first_line(e)})') from e
  labels, difficults, boxes = [], [], []
  for number, element in enumerate(root.findall('object'), 1):
    name = (element.findtext('name') or '').strip()
    if name not in CLASSES:
      what = f'class {name!r}' if name else 'no class <name>'
      raise InputError(
          f'annotation file {path}: object {number} has {what}; valid '
          f'classes: {", ".join(CLASSES)}')
    difficult = (element.findtext('difficult') or '0').strip()
    if difficult not in ('0', '1'):
      raise InputError(
          f'annotation file {path}: object {number} ({name}) has '
          f'<difficult>{difficult}</difficult>, expected 0 or 1')
    labels.append(CLASSES.index(name))
    difficults.append(difficult == '1')
    boxes.append(_read_box(element.find('bndbox'), path, number, name))
  complete = all(box is not None for box in boxes)
  return Annotation(
      labels=tuple(labels), difficult=tuple(difficults),
      boxes=(np.asarray(boxes, np.float32).reshape(-1, 4) if complete
             else None))


def _read_box(element, path: str, number: int, name: str):
  """An object's ``<bndbox>`` in 0-based pixels, or None if it has none."""
  if element is None:
    return None
  box = []
  for tag in ('xmin', 'ymin', 'xmax', 'ymax'):
    text = (element.findtext(tag) or '').strip()
    if not text:
      return None
    try:
      box.append(float(text) - 1.0)  # The devkit counts pixels from 1.
    except ValueError as e:
      raise InputError(
          f'annotation file {path}: object {number} ({name}) has '
          f'<{tag}>{text}</{tag}>, expected a pixel coordinate') from e
  return box


def open_classification(dataset: str, split: str, *,
                        data_dir: str | None = None) -> ClassificationSplit:
  """Opens a classification split of a VOC folder or of TFDS ``voc/2007``.

  Args:
    dataset: a VOCdevkit folder (its ``VOC2007/`` is read), a ``VOC20xx``
      folder, or a TFDS name (``voc/2007``).
    split: ``trainval`` or ``test`` (also ``train`` and ``val``). For TFDS
      ``trainval`` is its ``train`` + ``validation``.
    data_dir: TFDS's data folder (a TFDS name only).

  Raises:
    InputError: an unknown split, a folder without the devkit's layout, a
      missing annotation or image, an unknown class; TFDS's VOC2012 test
      split, which has no annotations.
    MissingInputError: the folder, a split file or a file it lists is
      missing; the TFDS dataset is not prepared and cannot be downloaded.
  """
  if split not in CLASSIFICATION_SPLITS:
    raise InputError(f'VOC classification split {split!r} is not one of '
                     f'{", ".join(CLASSIFICATION_SPLITS)}')
  if _is_tfds_name(dataset):
    return _open_tfds_classification(dataset, split, data_dir)
  year_dir, ids, paths = _open_listed(dataset, split, 'VOC2007',
                                       'Annotations', 'Main',
                                       _CLASSIFICATION_LAYOUT)
  targets = np.stack([
      targets_of(read_annotation(
          os.path.join(year_dir, 'Annotations', f'{image_id}.xml')))
      for image_id in ids])
  return ClassificationSplit(dataset, split, ids, targets, paths=paths)


def open_detection(dataset: str, split: str) -> DetectionSplit:
  """Opens a detection split of a VOC folder, every box checked.

  Args:
    dataset: a VOCdevkit folder (its ``VOC2007/`` is read) or a
      ``VOC20xx`` folder.
    split: ``trainval`` or ``test`` (also ``train`` and ``val``).

  Raises:
    InputError: a TFDS name (detection reads the devkit's files), an
      unknown split, a folder without the devkit's layout, an unknown
      class, an object without a box, a box that is empty or leaves its
      image.
    MissingInputError: the folder, the split file, or an image or
      annotation it lists is missing.
  """
  if _is_tfds_name(dataset):
    raise InputError(
        f'dataset={dataset!r}: detection reads a VOCdevkit folder (its '
        f'boxes and difficult flags as the devkit scores them); pass one '
        f'with {_CLASSIFICATION_LAYOUT}')
  if split not in DETECTION_SPLITS:
    raise InputError(f'VOC detection split {split!r} is not one of '
                     f'{", ".join(DETECTION_SPLITS)}')
  year_dir, ids, paths = _open_listed(dataset, split, 'VOC2007',
                                       'Annotations', 'Main',
                                       _CLASSIFICATION_LAYOUT)
  annotation_paths = [os.path.join(year_dir, 'Annotations', f'{i}.xml')
                      for i in ids]
  # Opening every JPEG's header costs a file open each (VOC2007 test:
  # 4,952); threads share the waiting.
  with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
    read = list(pool.map(_checked_objects, annotation_paths, paths))
  sizes = np.asarray([size for size, _ in read], np.int32).reshape(-1, 2)
  annotations = [annotation for _, annotation in read]
  return DetectionSplit(
      dataset, split, year_dir, ids, paths, sizes,
      boxes=tuple(a.boxes for a in annotations),
      labels=tuple(np.asarray(a.labels, np.int32) for a in annotations),
      difficult=tuple(np.asarray(a.difficult, bool) for a in annotations))


def _checked_objects(annotation_path: str, image_path: str):
  """``((height, width), Annotation)`` of one image, its boxes checked
  against the image's real size (the JPEG header's)."""
  annotation = read_objects(annotation_path)
  width, height = _image_size(image_path)
  if annotation.boxes is None:
    number = 1 + next(i for i, element in enumerate(
        xml.etree.ElementTree.parse(annotation_path).getroot().findall(
            'object')) if not _has_box(element))
    raise InputError(
        f'annotation file {annotation_path}: object {number} has no '
        'complete <bndbox> (xmin, ymin, xmax, ymax), which detection needs')
  for number, box in enumerate(annotation.boxes, 1):
    boxes_lib.check_boxes(
        box[None], height, width,
        f'annotation file {annotation_path}: object {number} '
        f'({CLASSES[annotation.labels[number - 1]]}), 1-based <bndbox> '
        f'{_one_based(box)}')
  return (height, width), annotation


def _has_box(element) -> bool:
  box = element.find('bndbox')
  return box is not None and all(
      (box.findtext(tag) or '').strip()
      for tag in ('xmin', 'ymin', 'xmax', 'ymax'))


def _one_based(box) -> str:
  return '(' + ', '.join(f'{v + 1:g}' for v in box) + ')'


def open_segmentation(dataset: str, split: str) -> SegmentationSplit:
  """Opens a segmentation split of a VOC folder, every mask checked.

  Args:
    dataset: a VOCdevkit folder (its ``VOC2012/`` is read) or a
      ``VOC20xx`` folder.
    split: ``train`` or ``val``.

  Raises:
    InputError: a TFDS name (TFDS has no VOC masks), an unknown split, a
      folder without the devkit's layout, a mask that is not a palette or
      grayscale PNG, whose size differs from its image's, or that holds
      values other than 0-20 and 255.
    MissingInputError: the folder, the split file, or an image or mask it
      lists is missing.
  """
  if _is_tfds_name(dataset):
    raise InputError(
        f'dataset={dataset!r}: TFDS has no VOC segmentation masks (its voc '
        'datasets hold boxes and labels only); pass a VOCdevkit folder '
        f'with {_SEGMENTATION_LAYOUT}')
  if split not in SEGMENTATION_SPLITS:
    raise InputError(f'VOC segmentation split {split!r} is not one of '
                     f'{", ".join(SEGMENTATION_SPLITS)}')
  year_dir, ids, paths = _open_listed(dataset, split, 'VOC2012',
                                       'SegmentationClass', 'Segmentation',
                                       _SEGMENTATION_LAYOUT)
  mask_paths = tuple(os.path.join(year_dir, 'SegmentationClass',
                                  f'{image_id}.png') for image_id in ids)
  # Reading every mask costs a PNG decode each (VOC2012: 1,464 + 1,449);
  # decoding releases the GIL, so threads share it out.
  with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
    list(pool.map(_check_mask, paths, mask_paths))
  return SegmentationSplit(dataset, split, ids, paths, mask_paths)


def _open_tfds_classification(name: str, split: str,
                              data_dir: str | None) -> ClassificationSplit:
  """Reads a TFDS VOC split: encoded images and their objects, by id."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from rotnet_jax.data import tfds_util
  # pylint: enable=g-import-not-at-top
  builder = tfds_util.prepared_builder(name, data_dir)
  year = builder.builder_config.name
  if year == '2012' and split == 'test':
    raise InputError(
        f'dataset={name!r} split {split!r}: the VOC2012 test split has no '
        'annotations (TFDS gives it none); use trainval/train/val, or '
        'voc/2007 whose test split is annotated')
  for part in _TFDS_SPLITS[split]:
    tfds_util.check_split(builder, part)
  names = tuple(builder.info.features['objects']['label'].names)
  if names != CLASSES:
    raise InputError(f'TFDS dataset {name!r} names its classes {names}, '
                     f'expected the 20 VOC classes {CLASSES}')
  examples = builder.as_dataset(
      split='+'.join(_TFDS_SPLITS[split]), shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()})
  rows = []
  for example in tfds.as_numpy(examples):
    filename = example['image/filename'].decode()
    objects = zip(example['objects']['label'].tolist(),
                  example['objects']['is_difficult'].tolist())
    rows.append((os.path.splitext(filename)[0], targets_of(objects),
                 bytes(example['image'])))
  if not rows:
    raise InputError(f'TFDS dataset {name!r} split {split!r} is empty')
  # TFDS stores examples shuffled; the devkit's split files list ids in
  # sorted order, which both readers then share.
  rows.sort(key=lambda row: row[0])
  ids, targets, blobs = zip(*rows)
  return ClassificationSplit(name, split, tuple(ids), np.stack(targets),
                             blobs=tuple(blobs))


def _open_listed(dataset: str, split: str, year: str, labels: str,
                 image_set: str, layout: str):
  """``(year folder, ids, image paths)`` of a split of a devkit folder:
  its ``JPEGImages/``, `labels` folder and ``ImageSets/<image_set>/``
  checked, the split file read, every listed image checked to exist."""
  year_dir = _year_folder(dataset, year, layout)
  _check_folders(year_dir, ('JPEGImages', labels,
                            os.path.join('ImageSets', image_set)), layout)
  split_file = os.path.join(year_dir, 'ImageSets', image_set, f'{split}.txt')
  ids = _read_split_file(split_file, layout)
  return year_dir, ids, _image_paths(year_dir, ids, split_file)


def _year_folder(dataset: str, year: str, layout: str) -> str:
  """The ``VOC20xx`` folder to read: `dataset` itself if it is one, else
  its `year` subfolder."""
  path = _path(dataset)
  if not os.path.isdir(path):
    raise MissingInputError(
        f'VOC folder {path} does not exist (dataset={dataset!r}); expected '
        f'the layout {layout}')
  if _YEAR_FOLDER.fullmatch(os.path.basename(path)):
    return path
  year_dir = os.path.join(path, year)
  if not os.path.isdir(year_dir):
    present = sorted(name for name in os.listdir(path)
                     if _YEAR_FOLDER.fullmatch(name))
    raise MissingInputError(
        f'VOC folder {path} has no {year}/ (it has '
        f'{", ".join(present) or "no VOC20xx folder"}); expected the layout '
        f'{layout}, or pass a VOC20xx folder itself')
  return year_dir


def _check_folders(year_dir: str, folders, layout: str) -> None:
  missing = [f'{folder}/' for folder in folders
             if not os.path.isdir(os.path.join(year_dir, folder))]
  if missing:
    raise MissingInputError(
        f'VOC folder {year_dir} lacks {", ".join(missing)}; expected the '
        f'layout {layout}')


def _read_split_file(split_file: str, layout: str) -> tuple[str, ...]:
  """The ids a split file lists, one per line, in its order."""
  try:
    with open(split_file) as f:
      lines = f.read().splitlines()
  except FileNotFoundError as e:
    folder = os.path.dirname(split_file)
    present = sorted(name for name in os.listdir(folder)
                     if name.endswith('.txt') and '_' not in name)
    raise MissingInputError(
        f'VOC split file {split_file} does not exist (split files there: '
        f'{", ".join(present) or "none"}); expected the layout {layout}'
    ) from e
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f'VOC split file {split_file} is not readable text '
                     f'({first_line(e)})') from e
  ids = tuple(line.split()[0] for line in lines if line.strip())
  if not ids:
    raise InputError(f'VOC split file {split_file} lists no image ids '
                     '(expected one id per line, e.g. 000005)')
  return ids


def _image_paths(year_dir: str, ids, split_file: str) -> tuple[str, ...]:
  """``JPEGImages/<id>.jpg`` of every id, each checked to exist."""
  paths = tuple(os.path.join(year_dir, 'JPEGImages', f'{image_id}.jpg')
                for image_id in ids)
  missing = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
  if missing:
    first = missing[0]
    raise MissingInputError(
        f'image file {paths[first]} does not exist (id {ids[first]!r} '
        f'listed in {split_file}; {len(missing)} of {len(ids)} listed ids '
        'have no JPEGImages/<id>.jpg)')
  return paths


def _read_mask(path: str) -> np.ndarray:
  """A SegmentationClass PNG's labels (palette indices), ``uint8 [H, W]``.

  Raises:
    InputError: not readable, or neither a palette nor a grayscale image
      (an RGB copy of a mask has colours, not labels).
  """
  try:
    with Image.open(path) as mask:
      if mask.mode not in ('P', 'L'):
        raise InputError(
            f'segmentation mask {path} is a {mask.mode} image; expected a '
            'palette (mode P) PNG whose indices are the labels 0-20 and '
            '255, as VOC\'s SegmentationClass PNGs are')
      return np.asarray(mask, np.uint8)
  except FileNotFoundError as e:
    raise MissingInputError(
        f'segmentation mask {path} does not exist; expected the layout '
        f'{_SEGMENTATION_LAYOUT}') from e
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f'cannot read segmentation mask {path} '
                     f'({first_line(e)})') from e


def _image_size(path: str) -> tuple[int, int]:
  """``(width, height)`` from the image file's header (nothing decoded)."""
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f'cannot read image file {path} '
                     f'({first_line(e)})') from e


def _check_mask(image_path: str, mask_path: str) -> None:
  """Raises InputError unless the mask fits its image and holds labels."""
  labels = _read_mask(mask_path)
  width, height = _image_size(image_path)
  if labels.shape != (height, width):
    raise InputError(
        f'segmentation mask {mask_path} is {labels.shape[1]}x'
        f'{labels.shape[0]}, its image {image_path} is {width}x{height}; '
        'expected the same size')
  present = np.bincount(labels.ravel(), minlength=256) > 0
  values = np.flatnonzero(present & _BAD_MASK_VALUES)
  if len(values):
    shown = ', '.join(str(v) for v in values[:_MAX_SHOWN])
    if len(values) > _MAX_SHOWN:
      shown += f', ... ({len(values)} values)'
    raise InputError(
        f'segmentation mask {mask_path} holds labels {shown}; expected '
        f'0-{len(SEGMENTATION_CLASSES) - 1} (the classes) and '
        f'{IGNORE_LABEL} (not scored)')
