"""``dataset=digits``: scikit-learn's bundled handwritten digits as 32x32 RGB.

The 1,797 real, labelled 8x8 grey images ship inside the scikit-learn wheel,
so quick runs and the tests need no download. They are upscaled bilinearly
to 32x32 (the CIFAR size the NIN expects) and repeated over three channels.
Digits have an upright orientation, so the rotation task is learnable.

Split (fixed): the first 1,500 images are ``train``, the last 297 ``test``.
The images are stored roughly writer by writer, so the test split is mostly
unseen writers.
"""

import functools

import numpy as np
from PIL import Image

from rotnet_jax.errors import InputError

IMAGE_SIZE = 32
NUM_TRAIN = 1500
NUM_CLASSES = 10
SPLITS = ('train', 'test')


@functools.lru_cache(maxsize=None)
def _all_images() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  # Pixel values are 0..16; stretch to 0..255 before resizing.
  small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  large = np.stack([
      np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE),
                                             Image.BILINEAR))
      for img in small
  ])
  rgb = np.repeat(large[..., None], 3, axis=-1)
  rgb.setflags(write=False)
  labels = digits.target.astype(np.int32)
  labels.setflags(write=False)
  return rgb, labels


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(images uint8 [N, 32, 32, 3], labels int32 [N])`` of `split`."""
  images, labels = _all_images()
  if split == 'train':
    return images[:NUM_TRAIN], labels[:NUM_TRAIN]
  if split == 'test':
    return images[NUM_TRAIN:], labels[NUM_TRAIN:]
  raise InputError(f'dataset digits has the splits {SPLITS}, not {split!r} '
                   '(config.train_split / config.test_split)')
