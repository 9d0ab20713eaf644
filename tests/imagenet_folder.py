"""Writes a small ImageNet-style image folder for tests (PIL and NumPy only).

``<root>/<split>/<wnid>/<wnid>_<i>.JPEG`` files of varied sizes, like the
real ILSVRC2012 folders: mostly RGB JPEGs, some grayscale and some CMYK
JPEGs, and one PNG with a ``.JPEG`` name (ImageNet has each of these).
Writing the default folder takes well under a second.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

MIN_SIDE, MAX_SIDE = 100, 500


@dataclasses.dataclass(frozen=True)
class WrittenFolder:
  """What :func:`write_imagenet_folder` wrote.

  Attributes:
    root: the dataset root (``dataset=`` of a config).
    class_names: the class folders, sorted (label ``k`` is the k-th).
    files: ``{split: [(path, label, mode, (height, width)), ...]}`` in
      folder order; mode is ``RGB``, ``L``, ``CMYK`` or ``PNG``.
  """
  root: str
  class_names: tuple[str, ...]
  files: dict

  def paths(self, split: str, mode: str | None = None) -> list[str]:
    """The files of `split` (of one `mode`), in folder order."""
    return [f[0] for f in self.files[split] if mode in (None, f[2])]


def _pixels(rng, height, width):
  """A smooth image with some texture: random colour gradients and noise
  (compresses like a photo, so sizes and decode times are realistic)."""
  ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
  xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
  a, b, c = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
  image = a * (1 - ys) * (1 - xs) + b * ys + c * xs * (1 - ys)
  image = image + rng.normal(0, 12, (height, width, 1)).astype(np.float32)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_imagenet_folder(root: str, *, classes: int = 3,
                          split_sizes: dict | None = None,
                          seed: int = 0) -> WrittenFolder:
  """Writes the folder; returns what was written.

  Args:
    root: dataset root (created).
    classes: class folders per split (``n0000000k``).
    split_sizes: images per class of each split; default ``{'train': 8,
      'val': 3}``.
    seed: sizes, contents and which files are grayscale or CMYK.

  In each split, per class the file at position 1 is grayscale and the one
  at position 2 CMYK; the first class's last training file is a PNG named
  ``.JPEG``.
  """
  split_sizes = split_sizes or {'train': 8, 'val': 3}
  rng = np.random.default_rng(seed)
  class_names = tuple(f'n{k:08d}' for k in range(classes))
  files = {}
  for split, count in split_sizes.items():
    files[split] = []
    for label, wnid in enumerate(class_names):
      folder = os.path.join(root, split, wnid)
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        height, width = (int(s) for s in rng.integers(MIN_SIDE, MAX_SIDE + 1,
                                                      2))
        image = Image.fromarray(_pixels(rng, height, width))
        mode = {1: 'L', 2: 'CMYK'}.get(i, 'RGB')
        if split == 'train' and label == 0 and i == count - 1:
          mode = 'PNG'
        path = os.path.join(folder, f'{wnid}_{i + 1}.JPEG')
        if mode == 'PNG':
          image.save(path, format='PNG')
        else:
          image.convert(mode).save(path, format='JPEG', quality=90)
        files[split].append((path, label, mode, (height, width)))
  return WrittenFolder(root=root, class_names=class_names, files=files)
