"""The one check that images are what the run expects.

Images reach a source three ways: as files of an image folder (checked as
each is decoded), as whole arrays (digits, a cached TFDS split), or as a
TFDS feature whose shape the dataset declares. All three are checked here,
so every message has one form, naming the file or dataset, the actual size
(width x height) and ``config.image_size``::

  image file /d/train/cat/7.png is 36x40, expected 32x32 (config.image_size=32)

With an augmentation of images of any size (``augmentation='imagenet'``
or ``'resize_crop'``: ``any_size``) every size is accepted: each image is
cropped and resized to ``config.image_size``.
"""

from collections.abc import Sequence

from rotnet_jax.errors import InputError

# What the tf.data pipeline can decode (tf.io.decode_jpeg / decode_png).
SUPPORTED_FORMATS = ('JPEG', 'PNG')


def check(what: str, image_size: int, *, height: int | None,
          width: int | None, channels: int | None = 3,
          file_format: str | None = None, any_size: bool = False) -> None:
  """Raises InputError unless an image is an `image_size` square RGB image.

  Args:
    what: names the image(s) as the subject of the message, e.g.
      ``image file /data/train/cat/7.png``.
    image_size: ``config.image_size``.
    height: image height; None when it varies between images.
    width: image width; None when it varies between images.
    channels: colour channels (a decoded file is converted to RGB: 3).
    file_format: PIL's format name of a file; None for decoded images.
    any_size: accept any height and width (``augmentation='imagenet'``
      and ``'resize_crop'`` crop and resize every image to `image_size`).

  Raises:
    InputError: a file format other than JPEG or PNG, another size, or not
      3 channels.
  """
  if file_format is not None and file_format not in SUPPORTED_FORMATS:
    raise InputError(f'{what} is {file_format}, expected one of '
                     f'{SUPPORTED_FORMATS}')
  if not any_size and (height, width) != (image_size, image_size):
    size = (f'{width}x{height}' if height and width else
            f'of varying size ({width or "?"}x{height or "?"})')
    raise InputError(f'{what} is {size}, expected {image_size}x{image_size} '
                     f'(config.image_size={image_size})')
  if channels != 3:
    raise InputError(f'{what} has {channels or "a varying number of"} '
                     'colour channels, expected 3 (RGB)')


def check_shape(what: str, shape: Sequence[int | None],
                image_size: int, *, any_size: bool = False) -> None:
  """:func:`check` for a ``[..., height, width, channels]`` shape."""
  if len(shape) < 3:
    raise InputError(f'{what} has shape {tuple(shape)}, expected '
                     f'(..., {image_size}, {image_size}, 3)')
  height, width, channels = shape[-3:]
  check(what, image_size, height=height, width=width, channels=channels,
        any_size=any_size)
