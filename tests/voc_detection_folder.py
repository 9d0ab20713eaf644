"""Writes a tiny PASCAL VOC2007 detection devkit of coloured shapes.

Each image is a light grey, noisy background with one to three filled
rectangles; a rectangle's colour says its class (:data:`SHAPE_CLASSES`),
so a tiny detector can learn it. Annotations are devkit XML with 1-based
``<bndbox>`` corners; every fourth object is ``difficult``. Proposals are
written in ``rotnet-proposals``' ``.npz`` format at the default cache
path: each object's box jittered a few times, plus random boxes, as a
region proposal method would give (no OpenCV needed).
"""

import os

import numpy as np
from PIL import Image

from rotnet_jax.data import voc

# The classes drawn, and their colours.
# The background's grey level: light, so the images stand out from the
# mean-coloured canvas they are placed on.
BACKGROUND = 200
SHAPE_CLASSES = {'aeroplane': (220, 40, 40), 'car': (40, 200, 40),
                 'person': (40, 60, 230)}


def _write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{line}\n' for line in lines))


def _objects(rng, height, width):
  """``[(class name, difficult, (x1, y1, x2, y2) 0-based)]`` of an image."""
  objects = []
  names = list(SHAPE_CLASSES)
  for _ in range(int(rng.integers(1, 4))):
    box_height = int(rng.integers(height // 4, height // 2))
    box_width = int(rng.integers(width // 5, width // 2))
    top = int(rng.integers(0, height - box_height))
    left = int(rng.integers(0, width - box_width))
    name = names[int(rng.integers(len(names)))]
    objects.append((name, bool(rng.random() < 0.25),
                    (left, top, left + box_width - 1, top + box_height - 1)))
  return objects


def _annotation(filename, height, width, objects) -> str:
  parts = [f'<annotation><filename>{filename}</filename><size><width>'
           f'{width}</width><height>{height}</height><depth>3</depth>'
           '</size>']
  for name, difficult, (x1, y1, x2, y2) in objects:
    parts.append(
        f'<object><name>{name}</name><difficult>{int(difficult)}'
        f'</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>'
        f'<xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax></bndbox></object>')
  parts.append('</annotation>')
  return '\n'.join(parts)


def write_shapes_devkit(root: str, *, trainval: int = 16, test: int = 8,
                        image_size=(96, 128), seed: int = 0,
                        proposals_per_image: int = 40) -> str:
  """Writes ``<root>/VOCdevkit/VOC2007`` and its proposals; returns the
  devkit's path.

  Args:
    root: folder to write into.
    trainval: images of ``trainval`` (the first half also ``train``, the
      rest ``val``).
    test: images of ``test``.
    image_size: ``(height, width)``; every other image is its transpose.
    seed: contents.
    proposals_per_image: proposals written per image.
  """
  rng = np.random.default_rng(seed)
  devkit = os.path.join(root, 'VOCdevkit')
  year = os.path.join(devkit, 'VOC2007')
  for folder in ('JPEGImages', 'Annotations'):
    os.makedirs(os.path.join(year, folder), exist_ok=True)
  ids = {'trainval': [], 'test': []}
  for k in range(trainval + test):
    image_id = f'{k + 1:06d}'
    height, width = image_size if k % 2 == 0 else image_size[::-1]
    pixels = rng.normal(BACKGROUND, 12, (height, width, 3))
    objects = _objects(rng, height, width)
    for name, _, (x1, y1, x2, y2) in objects:
      pixels[y1:y2 + 1, x1:x2 + 1] = SHAPE_CLASSES[name]
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        os.path.join(year, 'JPEGImages', f'{image_id}.jpg'), quality=95)
    with open(os.path.join(year, 'Annotations', f'{image_id}.xml'),
              'w') as f:
      f.write(_annotation(f'{image_id}.jpg', height, width, objects))
    ids['trainval' if k < trainval else 'test'].append(image_id)
  half = trainval // 2
  ids['train'], ids['val'] = ids['trainval'][:half], ids['trainval'][half:]
  for split, listed in ids.items():
    _write_lines(os.path.join(year, 'ImageSets', 'Main', f'{split}.txt'),
                 listed)
  for split in ('trainval', 'test'):
    write_proposals(devkit, split, per_image=proposals_per_image,
                    seed=seed + 1)
  return devkit


def proposals_for(split: voc.DetectionSplit, *, per_image: int,
                  seed: int = 0) -> list[np.ndarray]:
  """Per image: its objects' boxes jittered (4 each), then random boxes,
  ``per_image`` in all, inside the image."""
  rng = np.random.default_rng(seed)
  regions = []
  for (height, width), gt in zip(split.sizes, split.boxes):
    jittered = np.repeat(gt, 4, axis=0)
    sides = np.stack([jittered[:, 2] - jittered[:, 0],
                      jittered[:, 3] - jittered[:, 1]], axis=1)
    noise = rng.normal(0, 0.12, jittered.shape) * np.tile(sides, 2)
    jittered = jittered + noise
    random = []
    while len(jittered) + len(random) < per_image:
      x = np.sort(rng.uniform(0, width - 1, 2))
      y = np.sort(rng.uniform(0, height - 1, 2))
      random.append((x[0], y[0], x[1], y[1]))
    boxes = np.concatenate([jittered, np.asarray(random).reshape(-1, 4)])
    boxes = boxes[:per_image]
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0])
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1])
    regions.append(np.round(boxes).astype(np.float32))
  return regions


def write_proposals(devkit: str, split: str, *, per_image: int,
                    seed: int = 0, path: str | None = None) -> str:
  """Writes the proposals of :func:`proposals_for` as ``rotnet-proposals``
  does (at its default path unless `path`); returns the path."""
  # pylint: disable=g-import-not-at-top
  from rotnet_jax.data import proposals
  # pylint: enable=g-import-not-at-top
  opened = voc.open_detection(devkit, split)
  regions = proposals_for(opened, per_image=per_image, seed=seed)
  path = path or proposals.default_path(opened)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  counts = [len(r) for r in regions]
  np.savez(path, ids=np.asarray(opened.ids, dtype=str),
           image_sizes=opened.sizes.astype(np.int32),
           offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
           boxes=np.concatenate(regions).astype(np.float32),
           method=np.asarray('selective_search_fast'))
  return path
