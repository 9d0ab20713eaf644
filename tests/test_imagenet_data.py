"""ImageNet-style input (``augmentation='imagenet'`` and ``'resize_crop'``,
``pipeline='tfdata'``).

A generated folder of varied-size JPEGs (grayscale, CMYK and a PNG named
``.JPEG`` among them) through the training and evaluation pipelines; the
crop and resize geometry against references on synthetic images (the
random-sized crop, and the classifiers' random crop of the resized image);
bad
input (a manual download folder without ImageNet's archives, an empty or
undecodable file) named in one message.
"""

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_config
from helpers import evaluation_rows
from helpers import source_batches
from imagenet_folder import write_imagenet_folder
from rotnet_jax import data as data_lib
from rotnet_jax.data import datasets
from rotnet_jax.errors import ConfigError
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.training import train
from rotnet_jax.training import validation

tf = pytest.importorskip('tensorflow')
# pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax.data import imagenet_preprocess
from rotnet_jax.data import tfds_util
# pylint: enable=g-import-not-at-top,wrong-import-position

SIZE = 64  # Evaluation resizes the shorter side to round(64 * 8 / 7) = 73.


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return write_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')))


def _config(root, **overrides):
  return tiny_config(**dict(
      dict(dataset=root, pipeline='tfdata', augmentation='imagenet',
           image_size=SIZE, test_split='val', batch_size=8,
           num_train_examples=0), **overrides))


def _encode(pixels, fmt='PNG', mode='RGB', **kwargs):
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _coordinates(height, width):
  """R = row, G = column (both < 256), B = 0: each pixel says where it is."""
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([ys, xs, np.zeros_like(ys)], -1).astype(np.uint8)


def test_generator_is_fast_and_like_imagenet(tmp_path):
  start = time.perf_counter()
  written = write_imagenet_folder(str(tmp_path))
  assert time.perf_counter() - start < 5
  files = written.files['train'] + written.files['val']
  modes = {f[2] for f in files}
  assert modes == {'RGB', 'L', 'CMYK', 'PNG'}
  sizes = {f[3] for f in files}
  assert len(sizes) > len(files) // 2  # Varied sizes.
  assert all(100 <= side <= 500 for size in sizes for side in size)
  assert all(path.endswith('.JPEG') for path, *_ in files)
  with Image.open(written.paths('train', 'PNG')[0]) as img:
    assert img.format == 'PNG'


@pytest.mark.parametrize('mode', ['RGB', 'L', 'CMYK', 'PNG'])
def test_every_kind_of_file_decodes_to_rgb_as_pil_does(folder, mode):
  path = folder.paths('train', mode)[0]
  with Image.open(path) as img:
    expected = np.asarray(img.convert('RGB'))
  with open(path, 'rb') as f:
    decoded = imagenet_preprocess.decode(tf.constant(f.read())).numpy()
  np.testing.assert_array_equal(decoded, expected)


def test_training_and_evaluation_batches(folder, one_device_mesh):
  config = _config(folder.root)
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  batches = source_batches(source)
  assert len(batches) == len(folder.files['train']) // 8
  for batch in batches:
    assert batch['image'].shape == (8, SIZE, SIZE, 3)
    assert batch['image'].dtype == np.uint8
    assert set(batch['label']) <= {0, 1, 2}
  assert source.class_names == folder.class_names
  # Augmented: no training image is the evaluation transform of its file.
  centres = set()
  for path in folder.paths('train'):
    with open(path, 'rb') as f:
      centres.add(imagenet_preprocess.eval_bytes(
          tf.constant(f.read()), SIZE, 73).numpy().tobytes())
  assert not centres & {image.tobytes() for batch in batches
                        for image in batch['image']}
  evaluation = data_lib.make_source(config, 'val', one_device_mesh,
                                    train=False)
  rows = evaluation_rows(evaluation)
  assert rows['image'].shape == (len(folder.files['val']), SIZE, SIZE, 3)
  np.testing.assert_array_equal(rows['label'],
                                [f[1] for f in folder.files['val']])
  # Each evaluation image is the file's resize and central crop.
  path, _, _, (height, width) = folder.files['val'][0]
  with open(path, 'rb') as f:
    expected = imagenet_preprocess.eval_bytes(tf.constant(f.read()), SIZE,
                                              73).numpy()
  np.testing.assert_array_equal(rows['image'][0], expected)
  assert min(height, width) != 73  # The resize was not a no-op.


def test_epochs_are_reproducible_and_differ(folder, one_device_mesh):
  config = _config(folder.root)
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  first = source_batches(source, 0)
  again = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  for a, b in zip(first, source_batches(again, 0)):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  second = source_batches(source, 1)
  assert any(not np.array_equal(a['image'], b['image'])
             for a, b in zip(first, second))
  other_seed = data_lib.make_source(_config(folder.root, seed=1), 'train',
                                    one_device_mesh, train=True)
  assert any(not np.array_equal(a['image'], b['image'])
             for a, b in zip(first, source_batches(other_seed, 0)))


@pytest.mark.parametrize('height,width,top,left', [
    (73, 100, 4, 18),   # round(4.5) = 4 and round(18) = 18 (half to even).
    (150, 73, 43, 4),   # round(43) = 43; width 73 needs no resize.
    (73, 73, 4, 4),
    (73, 75, 4, 6),     # round(5.5) = 6: torchvision's round, not floor.
    (75, 73, 6, 4),
])
def test_evaluation_center_crop_without_resize(height, width, top, left):
  # The shorter side is already 73: only the central crop acts, and the
  # coordinate-coded pixels say exactly which source pixels it kept.
  image = _coordinates(height, width)
  out = imagenet_preprocess.eval_bytes(tf.constant(_encode(image)), SIZE,
                                       73).numpy()
  np.testing.assert_array_equal(out, image[top:top + SIZE, left:left + SIZE])


@pytest.mark.parametrize('height,width', [(146, 200), (300, 146), (120, 97)])
def test_evaluation_resize_matches_pil_bilinear(height, width):
  # torchvision's Scale(73) then CenterCrop(64), on PIL: the reference.
  rng = np.random.default_rng(height)
  image = np.asarray(Image.fromarray(
      rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)).resize(
          (width, height), Image.BILINEAR))
  if height <= width:
    new_w, new_h = 73 * width // height, 73
  else:
    new_w, new_h = 73, 73 * height // width
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h),
                                                     Image.BILINEAR))
  top, left = round((new_h - SIZE) / 2), round((new_w - SIZE) / 2)
  expected = resized[top:top + SIZE, left:left + SIZE].astype(int)
  out = imagenet_preprocess.eval_bytes(tf.constant(_encode(image)), SIZE,
                                       73).numpy()
  assert out.shape == (SIZE, SIZE, 3)
  assert np.abs(out.astype(int) - expected).max() <= 3
  assert np.abs(out.astype(int) - expected).mean() < 0.6


def test_random_sized_crop_windows_are_in_the_documented_ranges():
  area_range = imagenet_preprocess.AREA_RANGE
  ratio_range = imagenet_preprocess.ASPECT_RATIO_RANGE
  for height, width in [(375, 500), (500, 333), (224, 224), (97, 141)]:
    seeds = tf.stack([tf.fill([300], tf.constant(7, tf.int64)),
                      tf.range(300, dtype=tf.int64)], axis=1)
    windows = tf.function(lambda s, h=height, w=width: tf.map_fn(
        lambda seed: imagenet_preprocess.crop_window(h, w, seed), s,
        fn_output_signature=tf.int32))(
            seeds).numpy()
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + h <= height).all() and (x + w <= width).all()
    # Rounding to whole pixels moves area and ratio a little.
    area = h * w / (height * width)
    slack = (h + w + 1) / (height * width)
    assert (area >= area_range[0] - slack).all()
    assert (area <= area_range[1] + slack).all()
    ratio = w / h
    assert (ratio >= ratio_range[0] * (1 - 1 / h) - 1 / h).all()
    assert (ratio <= ratio_range[1] * (1 + 1 / h) + 1 / h).all()
    # The whole range is drawn from, and both orientations.
    # (Large windows of extreme ratio do not fit and are drawn again.)
    assert area.min() < 0.15 and area.max() > 0.7
    assert (ratio < 0.85).any() and (ratio > 1.15).any()
    assert len({(a, b) for a, b in zip(y, x)}) > 100  # Offsets vary.


def test_random_sized_crop_falls_back_to_the_central_square():
  # No window of >= 8% of the area and ratio in [3/4, 4/3] fits a 1000x20
  # strip (it would be >= 40 wide): the central 20x20 square is taken.
  window = imagenet_preprocess.crop_window(
      20, 1000, tf.constant([0, 0], tf.int64)).numpy()
  np.testing.assert_array_equal(window, [0, 490, 20, 20])


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_training_crop_shows_its_window_resized_and_flipped(fmt):
  # A coordinate-coded image (R = row, G = column): the output's mean R and
  # G are the centre of the window, and G runs the other way when flipped.
  height, width = 200, 250
  image = _coordinates(height, width)
  data = tf.constant(_encode(image, fmt, **(
      {'quality': 100, 'subsampling': 0} if fmt == 'JPEG' else {})))
  flips = set()
  for i in range(12):
    seed = tf.constant([3, i], tf.int64)
    out = imagenet_preprocess.train_bytes(data, seed, SIZE).numpy()
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    crop_seed, _ = imagenet_preprocess.train_seeds(seed)
    y, x, h, w = imagenet_preprocess.crop_window(height, width,
                                                 crop_seed).numpy()
    rows, cols = out[..., 0].astype(float), out[..., 1].astype(float)
    assert abs(rows.mean() - (y + (h - 1) / 2)) < 1.5
    assert abs(cols.mean() - (x + (w - 1) / 2)) < 1.5
    flipped = cols[:, 0].mean() > cols[:, -1].mean()
    flips.add(flipped)
    left, right = (cols[:, -1], cols[:, 0]) if flipped else (
        cols[:, 0], cols[:, -1])
    assert abs(left.mean() - x) < 0.5 * w / SIZE + 1.5
    assert abs(right.mean() - (x + w - 1)) < 0.5 * w / SIZE + 1.5
    # The same image decoded first gives the same crop (a JPEG's up to the
    # training crop's fast DCT and the chroma at the window's border).
    decoded = imagenet_preprocess.train_image(
        imagenet_preprocess.decode(data), seed, SIZE).numpy()
    assert np.abs(decoded.astype(int) - out).max() <= (0 if fmt == 'PNG'
                                                        else 3)
  assert flips == {True, False}


def _noise(height, width, seed=0):
  """Random pixels: every window of an image of them is unlike the others."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                              np.uint8)


def _window_of(out, resized):
  """The ``(top, left, flipped)`` windows of `resized` equal to `out`."""
  windows = np.lib.stride_tricks.sliding_window_view(
      resized, out.shape)[:, :, 0]
  found = []
  for flipped, image in ((False, out), (True, out[:, ::-1])):
    hits = np.argwhere((windows == image).all(axis=(2, 3, 4)))
    found += [(int(y), int(x), flipped) for y, x in hits]
  return found


@pytest.mark.parametrize('height,width,size,resize', [
    (100, 150, SIZE, 73), (170, 90, SIZE, 73),
    (300, 400, 224, 256),  # The official Scale(256), RandomCrop(224).
])
def test_resize_crop_is_a_window_of_the_shorter_side_resize(height, width,
                                                            size, resize):
  # augmentation='resize_crop' (Scale(R), RandomCrop(S), flip): every
  # training image is exactly an S x S window of the image resized to a
  # shorter side of R, flipped or not.
  image = _noise(height, width)
  data = tf.constant(_encode(image))
  resized = imagenet_preprocess.resize_shorter(tf.constant(image),
                                               resize).numpy()
  short, long = sorted((height, width))
  new_long = resize * long // short  # torchvision's int(R * long / short).
  assert resized.shape == ((resize, new_long, 3) if height <= width
                           else (new_long, resize, 3))
  # The resize is PIL's bilinear Scale (as the evaluation test measures).
  pil = np.asarray(Image.fromarray(image).resize(
      resized.shape[1::-1], Image.BILINEAR)).astype(int)
  assert np.abs(resized.astype(int) - pil).mean() < 1
  spare = np.subtract(resized.shape[:2], size)
  offsets, flips = set(), set()
  for i in range(16):
    seed = tf.constant([5, i], tf.int64)
    out = imagenet_preprocess.train_bytes(data, seed, size, 'resize_crop',
                                          resize).numpy()
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    y, x = imagenet_preprocess.resize_crop_offsets(*resized.shape[:2], seed,
                                                   size).numpy()
    assert 0 <= y <= spare[0] and 0 <= x <= spare[1]
    window = resized[y:y + size, x:x + size]
    flipped = not np.array_equal(out, window)
    np.testing.assert_array_equal(out, window[:, ::-1] if flipped else window)
    if size == SIZE:  # Small enough to search: no other window matches.
      assert _window_of(out, resized) == [(y, x, flipped)]
    offsets.add((y, x))
    flips.add(flipped)
    # The decoded image gives the same crop.
    np.testing.assert_array_equal(out, imagenet_preprocess.train_image(
        tf.constant(image), seed, size, 'resize_crop', resize).numpy())
  assert flips == {True, False}
  assert len(offsets) > 8  # Placed anew per seed.
  # Not the random-sized crop, whose output is no window of the resize.
  random_sized = imagenet_preprocess.train_bytes(
      data, tf.constant([5, 0], tf.int64), size).numpy()
  assert not any(np.array_equal(random_sized, resized[y:y + size, x:x + size])
                 for y, x in offsets)
  if size == SIZE:
    assert not _window_of(random_sized, resized)


def test_resize_crop_windows_cover_every_offset_uniformly():
  # torchvision's RandomCrop draws randint(0, side - S), both ends included.
  seeds = tf.stack([tf.fill([2000], tf.constant(3, tf.int64)),
                    tf.range(2000, dtype=tf.int64)], axis=1)
  offsets = tf.function(lambda s: tf.map_fn(
      lambda seed: imagenet_preprocess.resize_crop_offsets(73, 100, seed,
                                                           SIZE),
      s, fn_output_signature=tf.int32))(seeds).numpy()
  for axis, spare in enumerate((73 - SIZE, 100 - SIZE)):
    counts = np.bincount(offsets[:, axis], minlength=spare + 1)
    assert len(counts) == spare + 1 and (counts > 0).all()
    expected = 2000 / (spare + 1)
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
  # A shorter side already at the resize size: the crop of the image
  # itself (Places205's 256x256 images at full size).
  image = _coordinates(73, 100)
  out = imagenet_preprocess.train_bytes(
      tf.constant(_encode(image)), seeds[7], SIZE, 'resize_crop', 73).numpy()
  y, x = offsets[7]
  window = image[y:y + SIZE, x:x + SIZE]
  assert (np.array_equal(out, window) or
          np.array_equal(out, window[:, ::-1]))
  with pytest.raises(ValueError, match='needs resize_size'):
    imagenet_preprocess.train_bytes(tf.constant(_encode(image)), seeds[0],
                                    SIZE, 'resize_crop')


def test_resize_crop_through_the_source(tmp_path, one_device_mesh):
  # Every training file is the same noise image: each training image the
  # tf.data source gives must be a window of its resize (the random-sized
  # crop's would not be); evaluation is the 'imagenet' evaluation.
  image = _noise(90, 120)
  for split, count in (('train', 8), ('val', 2)):
    for label in ('a', 'b'):
      os.makedirs(tmp_path / split / label)
      for i in range(count // 2):
        Image.fromarray(image).save(tmp_path / split / label / f'{i}.png')
  resized = imagenet_preprocess.resize_shorter(tf.constant(image),
                                               73).numpy()

  def batches(augmentation, split, train):
    config = _config(str(tmp_path), augmentation=augmentation)
    return source_batches(data_lib.make_source(config, split, one_device_mesh,
                                               train=train))

  (batch,) = batches('resize_crop', 'train', True)
  assert batch['image'].shape == (8, SIZE, SIZE, 3)
  found = [_window_of(out, resized) for out in batch['image']]
  assert all(len(f) == 1 for f in found)
  assert len({f[0] for f in found}) > 1
  (random_sized,) = batches('imagenet', 'train', True)
  assert not any(_window_of(out, resized) for out in random_sized['image'])
  for a, b in zip(batches('resize_crop', 'val', False),
                  batches('imagenet', 'val', False)):
    np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.parametrize('augmentation', ['imagenet', 'resize_crop'])
def test_device_pipeline_refuses_any_size_augmentations(augmentation):
  config = tiny_config(augmentation=augmentation, pipeline='device')
  with pytest.raises(ConfigError, match=f"augmentation='{augmentation}' "
                     r"needs config.pipeline='tfdata'"):
    validation.check_config(config)
  config = tiny_config(augmentation=augmentation, pipeline='tfdata',
                       image_size=64, eval_resize_size=60)
  with pytest.raises(ConfigError, match=r'eval_resize_size=60: .* smaller'):
    validation.check_config(config)
  assert datasets.any_size(config)
  assert datasets.eval_resize_size(tiny_config(image_size=224)) == 256


def test_any_size_only_with_imagenet_augmentation(folder, one_device_mesh):
  config = _config(folder.root, augmentation='cifar')
  with pytest.raises(InputError, match=r'is \d+x\d+, expected 64x64'):
    data_lib.make_source(config, 'train', one_device_mesh, train=True)


def _existing_workdir(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text('{"step": 1}\n')
  return workdir


def _unchanged(workdir):
  return (sorted(os.listdir(workdir)) == ['metrics.jsonl'] and
          (workdir / 'metrics.jsonl').read_text() == '{"step": 1}\n')


def test_manual_folder_without_imagenet_archives(tmp_path, one_device_mesh):
  data_dir = tmp_path / 'tfds'
  (data_dir / 'downloads' / 'manual').mkdir(parents=True)
  (data_dir / 'downloads' / 'manual' / 'ILSVRC2012_img_val.tar').write_bytes(
      b'')
  workdir = _existing_workdir(tmp_path)
  config = _config('imagenet2012', data_dir=str(data_dir),
                   test_split='validation')
  with pytest.raises(MissingInputError) as error:
    train.train_and_evaluate(config, str(workdir), mesh=one_device_mesh)
  message = str(error.value)
  assert 'imagenet2012' in message
  assert str(data_dir / 'downloads' / 'manual') in message
  assert 'lacks ILSVRC2012_img_train.tar (' in message
  assert 'ILSVRC2012_img_val.tar' in message
  assert tfds_util.MANUAL_FILES['imagenet2012'] == (
      'ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
  assert _unchanged(workdir)


def test_an_empty_file_is_named_before_anything_is_written(tmp_path,
                                                         one_device_mesh):
  written = write_imagenet_folder(str(tmp_path / 'data'),
                                  split_sizes={'train': 4, 'val': 2})
  empty = written.paths('train')[5]
  open(empty, 'wb').close()
  workdir = _existing_workdir(tmp_path)
  with pytest.raises(InputError, match=f'image file {empty} is empty'):
    train.train_and_evaluate(_config(written.root), str(workdir),
                             mesh=one_device_mesh)
  assert _unchanged(workdir)


@pytest.mark.parametrize('damage', ['truncated', 'not_an_image'])
def test_an_undecodable_file_is_named_where_it_is_met(damage, tmp_path,
                                                      one_device_mesh):
  written = write_imagenet_folder(str(tmp_path / 'data'),
                                  split_sizes={'train': 4, 'val': 2})
  bad = written.paths('train', 'RGB')[2]
  with open(bad, 'rb') as f:
    data = f.read()
  with open(bad, 'wb') as f:
    f.write(data[:400] if damage == 'truncated' else b'<html>404</html>')
  config = _config(written.root, batch_size=4)  # Every file is read.
  # Opening the split decodes nothing (ImageNet would take hours).
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  # The source's own epoch turns TensorFlow's error into one naming it,
  # in every epoch (and from a mid-epoch start).
  for epoch, start_step in ((0, 0), (1, 0), (0, 1)):
    with pytest.raises(InputError,
                       match=f'image file {bad} cannot be decoded'):
      for _ in source.epoch(epoch, start_step):
        pass


def test_input_benchmark_reports_both_loops(folder, one_device_mesh):
  from rotnet_jax.training import benchmark  # pylint: disable=g-import-not-at-top
  report = benchmark.run_input_benchmark(
      _config(folder.root), examples=16, rounds=1, mesh=one_device_mesh)
  assert report['images_per_round'] == 16 and report['cores'] >= 1
  for name in ('project', 'bare'):
    result = report['results'][name]
    assert result['images_per_sec'] > 0
    assert result['cpu_ms_per_image'] > 0
  assert report['project_to_bare_ratio'] > 0
  with pytest.raises(InputError, match='is not one'):
    benchmark.run_input_benchmark(tiny_config(), mesh=one_device_mesh)


def test_a_tfds_dataset_of_varied_sizes(tmp_path, one_device_mesh):
  # As imagenet2012 and places365_small are read: JPEG bytes, left encoded
  # until the crop (tfds_util.process_examples(encoded=True)).
  tfds = pytest.importorskip('tensorflow_datasets')
  rng = np.random.default_rng(0)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3),
                                   encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(num_classes=3)})
  examples = {split: [(i, {
      'image': rng.integers(0, 256, (int(rng.integers(80, 200)),
                                     int(rng.integers(80, 200)), 3),
                            np.uint8),
      'label': i % 3}) for i in range(count)]
                    for split, count in (('train', 12), ('test', 5))}
  tfds.dataset_builders.store_as_tfds_dataset(
      name='varied_sizes', version='1.0.0', features=features,
      split_datasets=examples, data_dir=str(tmp_path),
      disable_shuffling=True)
  config = _config('varied_sizes', data_dir=str(tmp_path), test_split='test',
                   batch_size=4)
  rows = evaluation_rows(data_lib.make_source(config, 'test',
                                              one_device_mesh, train=False))
  assert rows['image'].shape == (5, SIZE, SIZE, 3)
  np.testing.assert_array_equal(rows['label'], [0, 1, 2, 0, 1])
  stored = tfds.builder('varied_sizes', data_dir=str(tmp_path)).as_dataset(
      split='test', shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()})
  first = next(iter(stored))['image']  # The stored JPEG bytes.
  np.testing.assert_array_equal(
      rows['image'][0], imagenet_preprocess.eval_bytes(first, SIZE,
                                                       73).numpy())
  for subset in (0, 8):  # The whole split, and a training subset.
    config.num_train_examples = subset
    source = data_lib.make_source(config, 'train', one_device_mesh,
                                  train=True)
    first_pass = source_batches(source)
    assert first_pass[0]['image'].shape == (4, SIZE, SIZE, 3)
    for a, b in zip(first_pass, source_batches(source)):
      np.testing.assert_array_equal(a['image'], b['image'])
