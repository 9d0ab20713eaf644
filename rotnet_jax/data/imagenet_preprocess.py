"""ImageNet-style decoding and augmentation in tf.data (images of any size).

The transforms of the official RotNet ImageNet loader (``dataloader.py`` of
gidariss/FeatureLearningRotNet, PyTorch 0.2-era torchvision), rewritten for
tf.data with stateless per-example seeds. Training, by
``config.augmentation``:

* ``imagenet``, the pretext task's (``RandomSizedCrop(S)``,
  ``RandomHorizontalFlip()``, the loader's ``random_sized_crop=True``): a
  crop of random area and aspect ratio, resized to ``S x S``, then a
  horizontal flip with probability 1/2. The window is drawn as torchvision 0.2's
  ``RandomResizedCrop.get_params`` draws it: up to 10 attempts of an area
  ``U(0.08, 1)`` of the image and an aspect ratio ``U(3/4, 4/3)``, width and
  height rounded (half to even, as Python's ``round``) and swapped with
  probability 1/2; the first attempt that fits is placed uniformly; if none
  fits, the central square of the shorter side. (Later torchvision draws
  the ratio log-uniformly and falls back differently; the ranges are the
  same.)
* ``resize_crop``, the linear and non-linear classifiers' (``Scale(R)``,
  ``RandomCrop(S)``, ``RandomHorizontalFlip()``, the loader's default): the
  shorter side resized to ``R`` (``config.eval_resize_size``, 256 for 224)
  as for evaluation, then an ``S x S`` window placed uniformly (offsets
  ``randint(0, side - S)``, both ends included), then the flip. For
  Places205, whose images are 256x256 already, the resize is the identity
  and this is the official ``RandomCrop(224)`` of the image.

Evaluation, either way (``Scale(R)``, ``CenterCrop(S)``): the shorter side
resized to ``R`` (the longer to ``floor(R * long / short)``), then the
central ``S x S`` square, its offset ``round((side - S) / 2)`` half to
even.

Resizing is bilinear with antialiasing, as PIL's bilinear filter (what
torchvision used) is when it shrinks. Random-sized JPEG crops are decoded
with ``decode_and_crop_jpeg``, which decodes only the rows of the window
(``resize_crop`` needs the whole image, resized first); the
pixels at a colour-subsampled window's border may differ from those of a
whole decode by the chroma upsampling (a few levels). Grayscale and CMYK
JPEGs decode to RGB (``channels=3``, identical to PIL's
``convert('RGB')``), and a PNG with a ``.JPEG`` name (ImageNet has one)
decodes as PNG.

Imports TensorFlow.
"""

import tensorflow as tf

# The training augmentations of images of any size (config.augmentation;
# data.datasets.ANY_SIZE_AUGMENTATIONS, which imports no TensorFlow, lists
# the same): see the module docstring.
TRAIN_AUGMENTATIONS = ('imagenet', 'resize_crop')
# torchvision's RandomResizedCrop ranges, which the official code used.
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
# The JPEG DCT that matches PIL's decoder bit for bit: evaluation and
# decode() use it.
_DCT = 'INTEGER_ACCURATE'
# Training crops take libjpeg's fast integer DCT (TensorFlow's default, and
# the bare loop's of `benchmark --input`): 0.05 ms of CPU less per 500x375
# JPEG. Its pixels differ from PIL's by a level or two, noise far below the
# random crop's; no other pipeline has to match training crops (the device
# pipeline refuses augmentation='imagenet').
_TRAIN_DCT = 'INTEGER_FAST'


def decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG or PNG bytes to ``uint8 [H, W, 3]`` RGB."""
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method=_DCT),
      lambda: tf.io.decode_png(data, channels=3))


def crop_window(height: tf.Tensor, width: tf.Tensor,
                seed: tf.Tensor) -> tf.Tensor:
  """The random-sized crop's window ``[y, x, h, w]`` (int32) in an image.

  Args:
    height: image height (scalar int).
    width: image width (scalar int).
    seed: stateless seed, shape ``[2]``.

  Returns:
    ``int32 [4]``: top, left, height, width of the window.
  """
  # The image's [height, width]; the arithmetic runs on [2, attempts]
  # rows of (height, width) pairs: every TensorFlow op of this per-example
  # function costs a few microseconds of CPU, as much as its work here.
  size = tf.cast(tf.stack([height, width]), tf.int32)
  area_seed, ratio_seed, swap_seed, place_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  # float64: the areas of large images stay exact before rounding.
  area = tf.cast(tf.reduce_prod(size), tf.float64)
  target = area * tf.random.stateless_uniform(
      [CROP_ATTEMPTS], area_seed, *AREA_RANGE, dtype=tf.float64)
  ratio = tf.random.stateless_uniform(
      [CROP_ATTEMPTS], ratio_seed, *ASPECT_RATIO_RANGE, dtype=tf.float64)
  # Rows: width, height. tf.round rounds half to even, as Python's round in
  # torchvision.
  wh = tf.cast(tf.round(tf.sqrt(tf.stack([target * ratio, target / ratio]))),
               tf.int32)
  swap = tf.random.stateless_uniform([CROP_ATTEMPTS], swap_seed) < 0.5
  # Rows: height, width; swapped, the height is the drawn width.
  hw = tf.where(swap, wh, tf.reverse(wh, [0]))
  fits = tf.reduce_all((hw <= size[:, tf.newaxis]) & (hw > 0), axis=0)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)
  crop = tf.where(found, hw[:, first], tf.reduce_min(size))
  spare = size - crop
  offsets = tf.where(found, _offsets(spare, place_seed), spare // 2)
  return tf.concat([offsets, crop], 0)


def _offsets(spare: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Uniform integer offsets ``[y, x]`` in ``[0, spare]`` (both ends
  included, as Python's ``random.randint`` in torchvision's crops)."""
  u = tf.random.stateless_uniform([2], seed, dtype=tf.float64)
  # The minimum guards u * (spare + 1) rounding up to spare + 1.
  return tf.minimum(
      tf.cast(tf.floor(u * tf.cast(spare + 1, tf.float64)), tf.int32), spare)


# Training crops are antialiased only when a side shrinks by more than this:
# TensorFlow's antialiased kernel costs about 1 ms of CPU per 224 crop, as
# much again as decoding it (measured on 500x375 JPEGs), and a crop of a
# typical ImageNet image (about 400x350) never shrinks by 2x.
TRAIN_ANTIALIAS_ABOVE = 2.0


def _resize(image: tf.Tensor, height, width,
            antialias_above: float = 1.0) -> tf.Tensor:
  """Bilinear resize back to uint8, antialiased (as PIL's bilinear filter)
  when a side shrinks by more than `antialias_above`.

  Antialiasing changes nothing when enlarging but takes TensorFlow's
  slower kernel, so it is skipped then.
  """
  size = tf.stack([height, width])
  if isinstance(height, int) and isinstance(width, int):
    # A constant threshold (training): two ops fewer per example. The
    # products are exact in float32 (antialias_above is 1 or 2).
    limit = tf.constant([antialias_above * height, antialias_above * width],
                        tf.float32)
  else:
    limit = antialias_above * tf.cast(size, tf.float32)
  shrinks = tf.reduce_any(tf.cast(tf.shape(image)[:2], tf.float32) > limit)
  resized = tf.cond(
      shrinks,
      lambda: tf.image.resize(image, size, 'bilinear', antialias=True),
      lambda: tf.image.resize(image, size, 'bilinear'))
  # No clipping: both kernels weigh the pixels with non-negative weights
  # that sum to 1, so the values stay in [0, 255] (up to float rounding,
  # far from the +-0.5 that would round outside); a clip costs two more
  # passes over the image (0.05 ms of CPU per 224 image).
  return tf.cast(tf.round(resized), tf.uint8)


def _flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  # Reversing the axes [1] or [] (a flip or a copy): cheaper than a tf.cond
  # (a function call per example), and tf.where's broadcast select took
  # 0.6 ms of CPU per 224 image.
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.reverse(image, tf.range(1, 1 + tf.cast(flip, tf.int32)))


def train_seeds(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """The crop and flip seeds of an example's training seed."""
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
  return crop_seed, flip_seed


def resize_shorter(image: tf.Tensor, resize_size) -> tf.Tensor:
  """``Scale(R)``: the shorter side of a ``uint8 [H, W, 3]`` image resized
  to `resize_size`, the longer to ``floor(R * long / short)`` (as
  torchvision's ``int()``), antialiased when shrinking."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  height_is_short = height <= width
  new_h = tf.where(height_is_short, resize_size, resize_size * height // width)
  new_w = tf.where(height_is_short, resize_size * width // height, resize_size)
  return _resize(image, new_h, new_w)


def resize_crop_offsets(height, width, seed: tf.Tensor,
                        image_size: int) -> tf.Tensor:
  """The ``resize_crop`` window's ``[y, x]`` (int32) in the image resized
  by :func:`resize_shorter`.

  Args:
    height: the resized image's height.
    width: the resized image's width.
    seed: the example's training seed (not the crop seed that
      :func:`train_seeds` splits from it), shape ``[2]``.
    image_size: side of the window (at most `height` and `width`).
  """
  crop_seed, _ = train_seeds(seed)
  spare = tf.cast(tf.stack([height, width]), tf.int32) - image_size
  return _offsets(spare, crop_seed)


def _resize_crop(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                 resize_size: int) -> tf.Tensor:
  """``Scale(R)``, ``RandomCrop(S)``, ``RandomHorizontalFlip()``."""
  _, flip_seed = train_seeds(seed)
  # The same resize as evaluation (antialiased, as PIL): the classifiers
  # see the pixels they are tested on, only placed elsewhere.
  resized = resize_shorter(image, resize_size)
  shape = tf.shape(resized)
  y, x = tf.unstack(resize_crop_offsets(shape[0], shape[1], seed,
                                        image_size))
  crop = tf.slice(resized, tf.stack([y, x, 0]), [image_size, image_size, 3])
  return tf.ensure_shape(_flip(crop, flip_seed),
                         [image_size, image_size, 3])


def _check_augmentation(augmentation: str, resize_size: int) -> None:
  if augmentation not in TRAIN_AUGMENTATIONS:
    raise ValueError(f'augmentation {augmentation!r}: one of '
                     f'{TRAIN_AUGMENTATIONS}')
  if augmentation == 'resize_crop' and not resize_size:
    raise ValueError("augmentation='resize_crop' needs resize_size (see "
                     'datasets.eval_resize_size)')


def train_image(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                augmentation: str = 'imagenet',
                resize_size: int = 0) -> tf.Tensor:
  """Training augmentation of a decoded ``uint8 [H, W, 3]`` image.

  Args:
    image: the image.
    seed: the example's stateless seed, shape ``[2]``.
    image_size: side of the output square.
    augmentation: one of :data:`TRAIN_AUGMENTATIONS` (see the module
      docstring).
    resize_size: ``resize_crop``: the shorter side is resized to this
      first (resolved, see ``datasets.eval_resize_size``).

  Returns:
    ``uint8 [image_size, image_size, 3]``.
  """
  _check_augmentation(augmentation, resize_size)
  if augmentation == 'resize_crop':
    return _resize_crop(image, seed, image_size, resize_size)
  crop_seed, flip_seed = train_seeds(seed)
  shape = tf.shape(image)
  y, x, h, w = tf.unstack(crop_window(shape[0], shape[1], crop_seed))
  crop = tf.slice(image, tf.stack([y, x, 0]), tf.stack([h, w, 3]))
  out = _flip(_resize(crop, image_size, image_size, TRAIN_ANTIALIAS_ABOVE),
              flip_seed)
  return tf.ensure_shape(out, [image_size, image_size, 3])


def train_bytes(data: tf.Tensor, seed: tf.Tensor, image_size: int,
                augmentation: str = 'imagenet',
                resize_size: int = 0) -> tf.Tensor:
  """:func:`train_image` of an encoded JPEG or PNG.

  For the random-sized crop, a JPEG is decoded only inside the crop window
  (most of the cost of a small crop of a large image is saved); a PNG, and
  any image for ``resize_crop`` (which resizes the whole image), is
  decoded whole.

  Returns:
    ``uint8 [image_size, image_size, 3]``.
  """
  _check_augmentation(augmentation, resize_size)
  if augmentation == 'resize_crop':
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=_TRAIN_DCT),
        lambda: tf.io.decode_png(data, channels=3))
    return _resize_crop(image, seed, image_size, resize_size)
  crop_seed, flip_seed = train_seeds(seed)

  def jpeg():
    shape = tf.io.extract_jpeg_shape(data)
    window = crop_window(shape[0], shape[1], crop_seed)
    return tf.image.decode_and_crop_jpeg(data, window, channels=3,
                                         dct_method=_TRAIN_DCT)

  def other():
    image = tf.io.decode_png(data, channels=3)
    shape = tf.shape(image)
    y, x, h, w = tf.unstack(crop_window(shape[0], shape[1], crop_seed))
    return tf.slice(image, tf.stack([y, x, 0]), tf.stack([h, w, 3]))

  crop = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  out = _flip(_resize(crop, image_size, image_size, TRAIN_ANTIALIAS_ABOVE),
              flip_seed)
  return tf.ensure_shape(out, [image_size, image_size, 3])


def eval_image(image: tf.Tensor, image_size: int,
               resize_size: int) -> tf.Tensor:
  """Evaluation transform of a decoded ``uint8 [H, W, 3]`` image.

  Args:
    image: the image.
    image_size: side of the output square.
    resize_size: the shorter side is resized to this (resolved, see
      ``datasets.eval_resize_size``); at least `image_size`.

  Returns:
    ``uint8 [image_size, image_size, 3]``.
  """
  resized = resize_shorter(image, resize_size)
  shape = tf.shape(resized)
  new_h, new_w = shape[0], shape[1]
  top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2),
                tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2),
                 tf.int32)
  out = tf.slice(resized, tf.stack([top, left, 0]),
                 [image_size, image_size, 3])
  return tf.ensure_shape(out, [image_size, image_size, 3])


def eval_bytes(data: tf.Tensor, image_size: int,
               resize_size: int) -> tf.Tensor:
  """:func:`eval_image` of an encoded JPEG or PNG."""
  return eval_image(decode(data), image_size, resize_size)


# Marks the error of a file that failed; :func:`input_error` finds it.
_BAD_FILE_MARK = 'rotnet_jax: image file failed to read or decode:'


def map_files(files: tf.data.Dataset, paths, fn) -> tf.data.Dataset:
  """Maps ``fn(encoded bytes, seed)`` over files, so that a file that fails
  can be named (by :func:`checked_file`, mapped over the result).

  TensorFlow's decode errors do not say which file failed, and checking
  every file before training would decode the whole dataset. Instead a
  failed element is dropped (``ignore_errors``), an end marker follows the
  last file, and each element comes paired with the position and path that
  it should have: after a dropped file, the element at its position (the
  next one, or the end marker) has the wrong index, and
  :func:`checked_file` fails with the expected path (:func:`input_error`
  turns that into an ``InputError``). The order and parallelism of the map
  are unchanged; the check costs no pipeline stage of its own (it runs in
  the caller's next map; a ``scan`` and a ``filter`` after the map cost 0.1
  ms of CPU per image).

  Args:
    files: dicts with ``image`` (a file path) and ``seed``, in the order of
      `paths`.
    paths: the file paths of `files`, in order (names a failed one).
    fn: ``(bytes, seed) -> uint8 image`` of a fixed shape.

  Returns:
    ``{'expected': {'index', 'path'}, 'example': ...}`` elements: `files`
    with ``image`` replaced by ``fn``'s image and its ``index`` added, one
    per file and then the end marker (zeros, ``index`` the file count), to
    pass through :func:`checked_file`.
  """
  count = len(paths)
  mapped = files.enumerate().map(
      lambda i, x: dict(x, image=fn(tf.io.read_file(x['image']), x['seed']),
                        index=i),
      num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  end = dict(tf.nest.map_structure(
      lambda spec: tf.zeros(spec.shape, spec.dtype), mapped.element_spec),
             index=tf.constant(count, tf.int64))
  expected = tf.data.Dataset.from_tensor_slices({
      'index': tf.range(count + 1, dtype=tf.int64),
      'path': tf.constant(list(paths) + [''], tf.string)})
  return tf.data.Dataset.zip({
      'expected': expected,
      'example': mapped.concatenate(tf.data.Dataset.from_tensors(end))})


def checked_file(element) -> tuple[dict, tf.Tensor]:
  """An element of :func:`map_files` to its example and mask, failing with
  the path of a file that failed (the element is not the expected one).

  Returns:
    ``(example, mask)``: the example without its ``index``, and the float32
    mask, 1 for a file and 0 for the end marker (whose image is zeros and
    label 0, as an evaluation batch's padding; a training epoch never
    reaches it).
  """
  expected, example = element['expected'], dict(element['example'])
  index = example.pop('index')
  check = tf.debugging.Assert(tf.equal(index, expected['index']),
                              [_BAD_FILE_MARK, expected['path']])
  with tf.control_dependencies([check]):
    mask = tf.cast(expected['path'] != '', tf.float32)
  return example, mask


def input_error(error: Exception):
  """The ``InputError`` naming the file a :func:`map_files` error is about.

  Returns:
    The InputError, or None when `error` is not about a failed file.
  """
  # pylint: disable=g-import-not-at-top
  from rotnet_jax.data import folder
  from rotnet_jax.errors import InputError
  text = str(getattr(error, 'message', error))
  if _BAD_FILE_MARK not in text:
    return None
  # Assert formats its data as "[mark] [path]".
  path = text.split(_BAD_FILE_MARK, 1)[1].split('[', 1)[-1].split(']', 1)[0]
  return InputError(f'image file {path} {folder.describe_bad_file(path)} '
                    '(met while reading the data): replace or remove it')


def raise_input_errors(batches):
  """Yields from `batches`, turning a :func:`map_files` failure into the
  ``InputError`` that names the file."""
  try:
    yield from batches
  except tf.errors.OpError as e:
    named = input_error(e)
    if named is None:
      raise
    raise named from None
