"""PASCAL VOC: the devkit's targets, checked folders, the host batch source.

Reads the tiny devkit of ``voc_folder.write_vocdevkit`` (and TFDS
``voc/2007`` prepared from it, offline); the augmentation tests build
splits of lossless PNG images whose colours say where each pixel came from.
"""

import io
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import voc_folder
from helpers import REPO_ROOT
from helpers import one_device_env
from rotnet_jax.data import shuffle
from rotnet_jax.data import voc
from rotnet_jax.data import voc_source
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError

CLASS = {name: k for k, name in enumerate(voc.CLASSES)}


@pytest.fixture(scope='module')
def devkit(tmp_path_factory):
  return voc_folder.write_vocdevkit(str(tmp_path_factory.mktemp('voc')))


@pytest.fixture
def devkit_copy(devkit, tmp_path):
  """A copy of the devkit a test may damage."""
  copy = os.path.join(tmp_path, 'VOCdevkit')
  shutil.copytree(devkit, copy)
  return copy


def _batches(source, epoch=0, start_step=0):
  return [jax.tree.map(np.asarray, batch)
          for batch in source.epoch(epoch, start_step)]


def _png(pixels) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return buffer.getvalue()


def _expected(**present) -> np.ndarray:
  """A target row: the named classes' values, -1 elsewhere."""
  row = np.full(len(voc.CLASSES), voc.NEGATIVE, np.int8)
  for name, value in present.items():
    row[CLASS[name]] = value
  return row


# The devkit's difficult rule.

def test_the_difficult_rule_on_a_hand_made_annotation(tmp_path):
  path = os.path.join(tmp_path, 'x.xml')
  with open(path, 'w') as f:
    f.write("""<annotation><filename>x.jpg</filename>
      <object><name>dog</name><difficult>0</difficult></object>
      <object><name>cat</name><difficult>1</difficult></object>
      <object><name>person</name><difficult>1</difficult></object>
      <object><name>person</name><difficult>0</difficult></object>
      <object><name>car</name><difficult>1</difficult></object>
      <object><name> car </name><difficult> 1 </difficult></object>
      <object><name>sofa</name></object>
    </annotation>""")
  objects = voc.read_annotation(path)
  assert objects == [(CLASS['dog'], False), (CLASS['cat'], True),
                     (CLASS['person'], True), (CLASS['person'], False),
                     (CLASS['car'], True), (CLASS['car'], True),
                     (CLASS['sofa'], False)]
  # Positive: any non-difficult object; ignored: only difficult ones (cat,
  # car); a missing <difficult> counts as 0 (sofa); the order of objects
  # does not matter (person).
  expected = _expected(dog=1, cat=0, person=1, car=0, sofa=1)
  np.testing.assert_array_equal(voc.targets_of(objects), expected)
  np.testing.assert_array_equal(voc.targets_of(objects[::-1]), expected)
  assert voc.targets_of([]).tolist() == [-1] * 20
  assert voc.targets_of(objects).dtype == np.int8


def test_targets_of_the_written_devkit(devkit):
  split = voc.open_classification(devkit, 'test')
  # Odd-numbered images are trainval, even-numbered test, in file order.
  assert split.ids[:3] == ('000002', '000004', '000006')
  assert split.targets.shape == (20, 20) and split.targets.dtype == np.int8
  rows = dict(zip(split.ids, split.targets))
  # Image k = id k + 1 (voc_folder.planned_objects): main class k // 2,
  # the next class difficult when k % 3 == 0, a difficult main object when
  # k % 5 == 0, a non-difficult second object when k % 7 == 0.
  np.testing.assert_array_equal(rows['000004'],  # k = 3
                                _expected(bicycle=1, bird=0))
  np.testing.assert_array_equal(rows['000002'],  # k = 1
                                _expected(aeroplane=1, bicycle=1))
  np.testing.assert_array_equal(  # k = 15: a difficult cat beside a
      rows['000016'], _expected(cat=1, chair=0))  # plain one.
  np.testing.assert_array_equal(  # k = 21: a difficult dog and a plain one.
      rows['000022'], _expected(diningtable=1, dog=1))
  np.testing.assert_array_equal(  # k = 39: the next class wraps round.
      rows['000040'], _expected(tvmonitor=1, aeroplane=0))
  trainval = voc.open_classification(devkit, 'trainval')
  train = voc.open_classification(devkit, 'train')
  val = voc.open_classification(devkit, 'val')
  assert trainval.ids == train.ids + val.ids
  np.testing.assert_array_equal(trainval.targets[0],  # k = 0, all rules
                                _expected(aeroplane=1, bicycle=1))
  with open(os.path.join(devkit, 'VOC2007', 'JPEGImages', '000002.jpg'),
            'rb') as f:
    assert split.encoded(0) == f.read()


def test_is_voc(devkit, tmp_path):
  assert voc.is_voc('voc/2007') and voc.is_voc('voc/2012')
  assert voc.is_voc('voc') and voc.is_voc('voc/2007:5.0.0')
  assert voc.is_voc(devkit) and voc.is_voc(os.path.join(devkit, 'VOC2012'))
  assert not voc.is_voc('cifar10') and not voc.is_voc('voc2007')
  assert not voc.is_voc(str(tmp_path)) and not voc.is_voc('digits')
  assert not voc.is_voc(str(tmp_path / 'missing'))


@pytest.fixture(scope='module')
def tfds_voc(devkit, tmp_path_factory):
  """TFDS voc/2007 prepared (by TFDS's own builder) from the devkit."""
  pytest.importorskip('tensorflow_datasets')
  return voc_folder.write_tfds_voc2007(
      devkit, str(tmp_path_factory.mktemp('tfds')))


@pytest.mark.slow  # Builds TFDS voc/2007; the folder reader of the same targets: test_targets_of_the_written_devkit.
def test_folder_and_tfds_give_the_same_targets(devkit, tfds_voc):
  # One test for all splits: under xdist each worker that runs one
  # prepares the TFDS dataset (5-14 s on the shared 2-core machine).
  for split in ('trainval', 'test', 'val'):
    folder = voc.open_classification(devkit, split)
    tfds_split = voc.open_classification('voc/2007', split,
                                         data_dir=tfds_voc)
    # TFDS stores the images shuffled; both list them in id order.
    assert tfds_split.ids == folder.ids
    np.testing.assert_array_equal(tfds_split.targets, folder.targets)
    assert [tfds_split.encoded(i) for i in range(len(folder))] == [
        folder.encoded(i) for i in range(len(folder))]
  assert tfds_split.describe(0) == "image '000021' of 'voc/2007' split 'val'"
  # Some targets are ignored (0) in both: the difficult flags came along.
  assert (tfds_split.targets == voc.IGNORED).any()


# Bad input: one line naming the file, what is wrong, what is expected.

def _remove(path):
  if os.path.isdir(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _damage_xml(devkit):
  path = os.path.join(devkit, 'VOC2007', 'Annotations', '000003.xml')
  with open(path) as f:
    text = f.read()
  _write(path, text.replace('<name>bicycle</name>', '<name>dragon</name>'))


def _resized_mask(devkit):
  path = os.path.join(devkit, 'VOC2012', 'SegmentationClass',
                      '2012_000002.png')
  labels = voc.open_segmentation(devkit, 'train').mask(1)
  voc_folder.write_mask(path, labels[:-3])


def _bad_values(devkit):
  path = os.path.join(devkit, 'VOC2012', 'SegmentationClass',
                      '2012_000003.png')
  labels = np.asarray(Image.open(path)).copy()
  labels[0, :3] = (21, 100, 21)
  voc_folder.write_mask(path, labels)


def _rgb_mask(devkit):
  path = os.path.join(devkit, 'VOC2012', 'SegmentationClass',
                      '2012_000001.png')
  Image.open(path).convert('RGB').save(path)


_VOC07 = os.path.join('VOC2007', '')
_VOC12 = os.path.join('VOC2012', '')
# (case, what it breaks, opener, split, the message's pattern).
BAD_INPUTS = [
    ('no Annotations', lambda d: _remove(os.path.join(d, _VOC07 +
                                                      'Annotations')),
     'classification', 'trainval',
     r'VOC2007 lacks Annotations/; expected the layout VOCdevkit/VOC2007/'),
    ('no JPEGImages', lambda d: _remove(os.path.join(d, _VOC07 +
                                                     'JPEGImages')),
     'classification', 'test', r'lacks JPEGImages/; expected the layout'),
    ('no ImageSets', lambda d: _remove(os.path.join(d, _VOC07 + 'ImageSets')),
     'classification', 'test', r'lacks ImageSets/Main/; expected'),
    ('no split file', lambda d: _remove(os.path.join(
        d, _VOC07 + 'ImageSets/Main/test.txt')),
     'classification', 'test',
     r'split file .*Main/test.txt does not exist \(split files there: '
     r'train.txt, trainval.txt, val.txt\); expected the layout'),
    ('no VOC2007', lambda d: _remove(os.path.join(d, 'VOC2007')),
     'classification', 'test', r'has no VOC2007/ \(it has VOC2012\)'),
    ('unknown class', _damage_xml, 'classification', 'trainval',
     r'000003.xml: object 1 has class \'dragon\'; valid classes: '
     r'aeroplane, bicycle, .*, tvmonitor$'),
    ('no annotation', lambda d: _remove(os.path.join(
        d, _VOC07 + 'Annotations/000005.xml')), 'classification', 'trainval',
     r'annotation file .*000005.xml does not exist'),
    ('bad XML', lambda d: _write(os.path.join(
        d, _VOC07 + 'Annotations/000005.xml'), '<annotation>'),
     'classification', 'trainval', r'000005.xml is not readable XML'),
    ('no image', lambda d: _remove(os.path.join(
        d, _VOC07 + 'JPEGImages/000003.jpg')), 'classification', 'trainval',
     r'image file .*000003.jpg does not exist \(id \'000003\' listed in '
     r'.*trainval.txt; 1 of 20 listed ids'),
    ('empty split', lambda d: _write(os.path.join(
        d, _VOC07 + 'ImageSets/Main/test.txt'), '\n'), 'classification',
     'test', r'test.txt lists no image ids'),
    ('mask size', _resized_mask, 'segmentation', 'train',
     r'mask .*2012_000002.png is 58x55, its image .*2012_000002.jpg is '
     r'58x58; expected the same size'),
    ('mask values', _bad_values, 'segmentation', 'train',
     r'mask .*2012_000003.png holds labels 21, 100; expected 0-20 '),
    ('RGB mask', _rgb_mask, 'segmentation', 'train',
     r'mask .*2012_000001.png is a RGB image; expected a palette'),
    ('no segmentation image', lambda d: _remove(os.path.join(
        d, _VOC12 + 'JPEGImages/2012_000007.jpg')), 'segmentation', 'val',
     r'image file .*2012_000007.jpg does not exist'),
    ('no mask', lambda d: _remove(os.path.join(
        d, _VOC12 + 'SegmentationClass/2012_000007.png')), 'segmentation',
     'val', r'mask .*2012_000007.png does not exist'),
    ('no SegmentationClass', lambda d: _remove(os.path.join(
        d, _VOC12 + 'SegmentationClass')), 'segmentation', 'val',
     r'lacks SegmentationClass/; expected the layout VOCdevkit/VOC2012/'),
    ('no segmentation split', lambda d: _remove(os.path.join(
        d, _VOC12 + 'ImageSets/Segmentation/val.txt')), 'segmentation',
     'val', r'Segmentation/val.txt does not exist \(split files there: '
     r'train.txt\)'),
    ('unknown split', lambda d: None, 'segmentation', 'trainval',
     r'segmentation split \'trainval\' is not one of train, val'),
    ('unknown classification split', lambda d: None, 'classification',
     'minival', r'split \'minival\' is not one of trainval, test, train'),
]


@pytest.mark.parametrize('case,damage,task,split,message', BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_refused_on_open(case, damage, task, split, message,
                                      devkit_copy):
  del case
  damage(devkit_copy)
  opener = {'classification': voc.open_classification,
            'segmentation': voc.open_segmentation}[task]
  with pytest.raises(InputError, match=message) as raised:
    opener(devkit_copy, split)
  assert '\n' not in str(raised.value)


def test_other_refusals(tmp_path, devkit):
  with pytest.raises(InputError, match='TFDS has no VOC segmentation masks'):
    voc.open_segmentation('voc/2007', 'train')
  with pytest.raises(MissingInputError, match='does not exist'):
    voc.open_classification(str(tmp_path / 'VOCdevkit'), 'test')
  split = voc.open_classification(devkit, 'test')
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  with pytest.raises(InputError, match=r'scale_range=\(2.0, 1.0\)'):
    voc_source.VOCSource(split, mesh=mesh, batch_size=2, train=True,
                         seed=0, image_size=16, scale_range=(2.0, 1.0))


def test_an_undecodable_image_is_named(devkit_copy, one_device_mesh):
  split = voc.open_classification(devkit_copy, 'test')
  _write(split.paths[5], 'not a JPEG')
  source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=4,
                                train=False, seed=0, image_size=16,
                                test_crops=2)
  with pytest.raises(InputError, match=r'image file .*000012.jpg cannot be '
                     r'decoded as an image'):
    _batches(source)


# Batches.

def test_classification_batches(devkit, one_device_mesh):
  split = voc.open_classification(devkit, 'test')
  train = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=8,
                               train=True, seed=3, image_size=24)
  assert (train.num_examples, train.num_classes, train.steps_per_epoch) == (
      20, 20, 2)
  assert train.class_names == voc.CLASSES and train.resident == {}
  batches = _batches(train)
  assert len(batches) == 2
  for batch in batches:
    assert batch['image'].shape == (8, 24, 24, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].shape == (8, 20) and batch['label'].dtype == np.int8
    assert batch['mask'].dtype == np.float32 and (batch['mask'] == 1).all()
  # The labels follow the epoch's order (shuffle.epoch_order).
  order = shuffle.epoch_order(20, 3, 0)[:16]
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in batches]), split.targets[order])
  test = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=8,
                              train=False, seed=3, image_size=24,
                              test_crops=3)
  batches = _batches(test)
  assert len(batches) == test.steps_per_epoch == 3
  last = batches[-1]
  assert last['image'].shape == (8, 3, 24, 24, 3)
  np.testing.assert_array_equal(last['mask'], [1] * 4 + [0] * 4)
  # Padding: black images, ignored labels.
  assert (last['image'][4:] == 0).all() and (last['label'][4:] == 0).all()
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in batches])[:20], split.targets)
  # The images are photographs' crops, not padding.
  assert (last['image'][:4].reshape(4, -1).max(axis=1) > 0).all()


def test_segmentation_batches(devkit, one_device_mesh):
  split = voc.open_segmentation(devkit, 'val')
  assert len(split) == 5
  for train, steps in ((True, 2), (False, 3)):
    source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=2,
                                  train=train, seed=0, image_size=40)
    assert source.num_classes == 21 and source.steps_per_epoch == steps
    assert source.class_names[0] == 'background'
    batches = _batches(source)
    assert len(batches) == steps
    for batch in batches:
      assert batch['image'].shape == (2, 40, 40, 3)
      assert batch['label'].shape == (2, 40, 40)
      assert batch['label'].dtype == np.uint8
    if not train:
      last = batches[-1]
      np.testing.assert_array_equal(last['mask'], [1, 0])
      assert (last['label'][1] == 255).all() and (last['image'][1] == 0).all()


_WITHOUT_TENSORFLOW = """
import sys
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
import jax
import numpy as np
from rotnet_jax import parallel
from rotnet_jax.data import voc
from rotnet_jax.data import voc_source
mesh = parallel.make_mesh(jax.devices()[:1])
for split in (voc.open_classification(sys.argv[1], 'test'),
              voc.open_segmentation(sys.argv[1], 'val')):
  source = voc_source.VOCSource(split, mesh=mesh, batch_size=4, train=True,
                                seed=0, image_size=32)
  batch = next(source.epoch(0))
  print(tuple(batch['label'].shape), np.asarray(batch['mask']).sum())
"""


def test_the_source_needs_no_tensorflow(devkit):
  # As on a GPU machine without tensorflow or tfds: importing either fails.
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW, devkit], cwd=REPO_ROOT,
      env=one_device_env(JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split('\n')[:2] == ['(4, 20) 4.0', '(4, 32, 32) 4.0']


# Classification augmentation: a gradient image, whose pixel at (y, x) is
# (10 + x, 10 + y, 128), tells where each crop pixel came from.

GRADIENT_HEIGHT, GRADIENT_WIDTH = 200, 240


def _gradient(height=GRADIENT_HEIGHT, width=GRADIENT_WIDTH):
  ys, xs = np.mgrid[:height, :width]
  return np.stack([10 + xs, 10 + ys, np.full_like(xs, 128)],
                  axis=-1).astype(np.uint8)


def _gradient_split(count, **size):
  blob = _png(_gradient(**size))
  return voc.ClassificationSplit(
      'gradients', 'test', tuple(str(i) for i in range(count)),
      np.zeros((count, 20), np.int8), blobs=(blob,) * count)


def _window_of(crop):
  """``(side / S, left, top, mirrored)`` of a crop of the gradient: its
  columns' x and rows' y must be affine in the output index, with one
  slope (a square window)."""
  size = crop.shape[0]
  centres = np.arange(size) + 0.5
  # The sampled coordinate: value - 10 + 0.5 (pixel centres), + 0.5 on
  # average for PIL's truncation.
  xs = crop[:, :, 0].astype(np.float64) - 10 + 1.0
  ys = crop[:, :, 1].astype(np.float64) - 10 + 1.0
  x_slope, x_start = np.polyfit(centres, xs.mean(axis=0), 1)
  y_slope, y_start = np.polyfit(centres, ys.mean(axis=1), 1)
  # A window: every row and column is the same affine ramp.
  assert np.abs(xs - (x_start + x_slope * centres)[None]).max() < 1.5
  assert np.abs(ys - (y_start + y_slope * centres)[:, None]).max() < 1.5
  mirrored = x_slope < 0
  # Each slope is fitted to levels PIL truncated: within about 0.04.
  assert abs(abs(x_slope) - y_slope) < 0.08
  left = x_start + size * x_slope if mirrored else x_start
  return y_slope, left, y_start, mirrored


def test_training_crops_are_mirrored_windows_of_the_scaled_image(
    one_device_mesh):
  size = 32
  source = voc_source.VOCSource(
      _gradient_split(96), mesh=one_device_mesh, batch_size=96, train=True,
      seed=0, image_size=size)
  (batch,) = _batches(source)
  windows = [_window_of(crop) for crop in batch['image']]
  scales = np.array([w[0] for w in windows])
  # Uniform in [0.5, 2] (the window's side over S), well spread.
  assert scales.min() > 0.45 and scales.max() < 2.05
  assert scales.min() < 0.6 and scales.max() > 1.9
  assert 1.1 < scales.mean() < 1.4
  # Inside the image: no padding (the blue channel is 128 everywhere).
  assert (batch['image'][..., 2] == 128).all()
  for scale, left, top, _ in windows:
    assert -1 < left and left + scale * size < GRADIENT_WIDTH + 1
    assert -1 < top and top + scale * size < GRADIENT_HEIGHT + 1
  mirrored = sum(w[3] for w in windows)
  assert 25 < mirrored < 71  # Half of 96, give or take 4.7 sigma.


def test_windows_fit_in_small_images(one_device_mesh):
  # 48 x 80 with S = 32: the window's side is at most 48, so the scale at
  # most 1.5, and the lower end 0.5 stays.
  source = voc_source.VOCSource(
      _gradient_split(64, height=48, width=80), mesh=one_device_mesh,
      batch_size=64, train=True, seed=1, image_size=32)
  (batch,) = _batches(source)
  assert (batch['image'][..., 2] == 128).all()  # Never padded.
  scales = np.array([_window_of(crop)[0] for crop in batch['image']])
  assert scales.max() < 1.55 and scales.max() > 1.35 and scales.min() < 0.7
  # An image smaller than S, 10 x 30 with S = 16: sides from 0.5 S = 8 to
  # the height, 10, zoomed in.
  rng = np.random.default_rng(0)
  sides = []
  for _ in range(50):
    top, left, side, _ = voc_source.draw_window(rng, 10, 30, 16)
    assert 8 <= side <= 10 and 0 <= top <= 10 - side
    assert 0 <= left <= 30 - side
    sides.append(side)
  assert min(sides) < 8.2 and max(sides) > 9.8
  # Below half of S (6 x 30): the lower end drops with the cap.
  for _ in range(5):
    top, left, side, _ = voc_source.draw_window(rng, 6, 30, 16)
    assert side == pytest.approx(6) and top == pytest.approx(0)


def test_scales_are_uniform_not_log_uniform():
  rng = np.random.default_rng(0)
  sides = np.array([voc_source.draw_window(rng, 1000, 1000, 100)[2]
                    for _ in range(4000)]) / 100
  # Uniform on [0.5, 2]: mean 1.25, a quarter of the draws below 0.875;
  # log-uniform would have mean 1.08 and half below 1.
  assert abs(sides.mean() - 1.25) < 0.03
  assert abs((sides < 0.875).mean() - 0.25) < 0.03
  assert sides.min() >= 0.5 and sides.max() <= 2.0


def test_crop_samples_the_window_bilinearly():
  image = Image.fromarray(_gradient())
  # Output pixel (i, j) samples (top + (i + .5) s, left + (j + .5) s),
  # here s = 32 / 8 = 4; the gradient's value there is 10 + coordinate -
  # 0.5 (pixel k's centre is at k + 0.5): 61.5 + 4 j across, 41.5 + 4 i
  # down (PIL truncates; rounding would be as close).
  out = voc_source.crop(image, (30.0, 50.0, 32.0, False), 8)
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  across = np.broadcast_to(61.5 + 4 * np.arange(8)[None], (8, 8))
  down = np.broadcast_to(41.5 + 4 * np.arange(8)[:, None], (8, 8))
  np.testing.assert_allclose(out[:, :, 0], across, atol=0.5)
  np.testing.assert_allclose(out[:, :, 1], down, atol=0.5)
  mirrored = voc_source.crop(image, (30.0, 50.0, 32.0, True), 8)
  np.testing.assert_array_equal(mirrored, out[:, ::-1])


def test_test_crops_are_the_same_in_every_evaluation(devkit,
                                                     one_device_mesh):
  split = voc.open_classification(devkit, 'test')

  def evaluation(seed):
    return _batches(voc_source.VOCSource(
        split, mesh=one_device_mesh, batch_size=8, train=False, seed=seed,
        image_size=24, test_crops=4))

  first = evaluation(0)
  for a, b in zip(first, evaluation(0)):
    np.testing.assert_array_equal(a['image'], b['image'])
  # The crops of an image differ, and another seed draws others.
  crops = first[0]['image'][0]
  assert len({c.tobytes() for c in crops}) == 4
  assert not np.array_equal(first[0]['image'], evaluation(1)[0]['image'])
  # The same every epoch too.
  source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=8,
                                train=False, seed=0, image_size=24,
                                test_crops=4)
  np.testing.assert_array_equal(_batches(source, epoch=5)[1]['image'],
                                first[1]['image'])


@pytest.mark.parametrize('segmentation', [False, True])
def test_resuming_mid_epoch_gives_the_same_batches(segmentation, devkit,
                                                   one_device_mesh):
  split = (voc.open_segmentation(devkit, 'train') if segmentation else
           voc.open_classification(devkit, 'trainval'))
  source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=2,
                                train=True, seed=7, image_size=32,
                                epoch_length=2 * len(split))
  whole = _batches(source, epoch=2)
  assert len(whole) == len(split)
  resumed = _batches(source, epoch=2, start_step=3)
  assert len(resumed) == len(whole) - 3
  for a, b in zip(whole[3:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Another epoch: another order and other crops.
  other = _batches(source, epoch=3)
  assert not all(np.array_equal(a['image'], b['image'])
                 for a, b in zip(whole, other))
  assert _batches(source, epoch=2, start_step=len(whole)) == []


def test_each_process_builds_its_own_rows(monkeypatch, devkit,
                                          one_device_mesh):
  split = voc.open_classification(devkit, 'test')  # 20 images.

  def source_of(process, processes, train):
    monkeypatch.setattr(jax, 'process_count', lambda: processes)
    monkeypatch.setattr(jax, 'process_index', lambda: process)
    try:
      return voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=8,
                                  train=train, seed=0, image_size=16,
                                  test_crops=2)
    finally:
      monkeypatch.undo()

  for train in (True, False):
    single = source_of(0, 1, train)
    order = single.order(0)
    for step in range(single.steps_per_epoch):
      rows = single.rows(order, step)
      halves = [source_of(p, 2, train).rows(order, step) for p in (0, 1)]
      assert [len(h) for h in halves] == [4, 4]
      # Together the two processes build the batch of one process, and
      # each row is the same example with the same draws.
      assert sorted(halves[0] + halves[1]) == sorted(rows)
      assert all(position % 2 == p for p in (0, 1)
                 for position, _ in halves[p] if position >= 0)
      position, index = halves[1][0]
      np.testing.assert_array_equal(
          source_of(1, 2, train).example(0, position, index)['image'],
          single.example(0, position, index)['image'])
  # Evaluation: 20 images, 10 per process, 3 steps of 4 rows each.
  assert source_of(1, 2, False).steps_per_epoch == 3


# Segmentation: labels stay with their pixels.

COLOURS = np.zeros((256, 3), np.uint8)
COLOURS[:21] = [(12 * k, 250 - 12 * k, 40 + 9 * k) for k in range(21)]
COLOURS[255] = (255, 255, 255)


# Top-left corners of the 14 x 14 blocks (2-pixel 255 borders) of a
# 36 x 52 mask; no two overlap, and no layout is its own mirror.
BLOCKS = ((2, 3), (2, 29), (19, 8), (20, 34))


def _segmentation_split(tmp_path, count=1, seed=0):
  """36 x 52 PNG images (in .jpg files: PIL reads by content) whose colour
  is COLOURS of their label: background and blocks of random classes."""
  rng = np.random.default_rng(seed)
  paths, mask_paths = [], []
  for i in range(count):
    labels = np.zeros((36, 52), np.uint8)
    for y, x in BLOCKS:
      labels[y:y + 14, x:x + 14] = 255
      labels[y + 2:y + 12, x + 2:x + 12] = rng.integers(1, 21)
    paths.append(os.path.join(tmp_path, f'{i}.jpg'))
    mask_paths.append(os.path.join(tmp_path, f'{i}.png'))
    Image.fromarray(COLOURS[labels]).save(paths[-1], format='PNG')
    voc_folder.write_mask(mask_paths[-1], labels)
  return voc.SegmentationSplit('coloured', 'train',
                               tuple(str(i) for i in range(count)),
                               tuple(paths), tuple(mask_paths))


def _find_window(labels, original, size):
  """``(mirrored, top, left)`` of the window of `original` (or its mirror)
  that the canvas `labels` shows at its top-left."""
  height, width = original.shape
  shown = labels[:min(height, size), :min(width, size)]
  found = []
  for mirrored in (False, True):
    source = original[:, ::-1] if mirrored else original
    for top in range(height - shown.shape[0] + 1):
      for left in range(width - shown.shape[1] + 1):
        window = source[top:top + shown.shape[0], left:left + shown.shape[1]]
        if np.array_equal(window, shown):
          found.append((mirrored, top, left))
  assert len(found) == 1, found
  return found[0]


def test_segmentation_labels_stay_with_their_pixels(tmp_path,
                                                    one_device_mesh):
  split = _segmentation_split(tmp_path, count=1)
  original = split.mask(0)
  assert split.mask(0).dtype == np.uint8 and original.shape == (36, 52)
  # 36 x 52 on a 40 x 40 canvas: cropped in width, padded in height.
  source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=1,
                                train=True, seed=0, image_size=40,
                                epoch_length=24)
  windows = set()
  for batch in _batches(source):
    image, labels = batch['image'][0], batch['label'][0]
    # Every pixel's colour is its label's; padding is black and 255.
    np.testing.assert_array_equal(image[:36], COLOURS[labels[:36]])
    assert (labels[36:] == 255).all() and (image[36:] == 0).all()
    windows.add(_find_window(labels, original, 40))
  assert {mirrored for mirrored, _, _ in windows} == {False, True}
  assert len({left for _, _, left in windows}) >= 5
  assert {top for _, top, _ in windows} == {0}


def test_segmentation_evaluation_keeps_or_shrinks_whole_images(
    tmp_path, one_device_mesh):
  split = _segmentation_split(tmp_path, count=2)
  # S = 60 >= 52: every pixel kept as it is.
  source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=2,
                                train=False, seed=0, image_size=60)
  (batch,) = _batches(source)
  np.testing.assert_array_equal(batch['label'][0, :36, :52], split.mask(0))
  assert (batch['label'][:, 36:] == 255).all()
  assert (batch['label'][:, :, 52:] == 255).all()
  np.testing.assert_array_equal(batch['image'][0, :36, :52],
                                COLOURS[split.mask(0)])
  assert (batch['image'][:, 36:] == 0).all()
  # S = 26: scaled by 1/2 to 18 x 26, labels by nearest neighbour.
  source = voc_source.VOCSource(split, mesh=one_device_mesh, batch_size=2,
                                train=False, seed=0, image_size=26)
  (batch,) = _batches(source)
  labels, image = batch['label'][0], batch['image'][0]
  assert (labels[18:] == 255).all() and (image[18:] == 0).all()
  assert set(np.unique(labels[:18])) <= set(np.unique(split.mask(0)))
  # Nearest: each label pixel is one of the 2 x 2 it stands for.
  block = split.mask(0).reshape(18, 2, 26, 2)
  assert (labels[:18, :, None, None] == block.transpose(0, 2, 1, 3)).any(
      axis=(2, 3)).all()
  # Away from label edges the bilinear colour is the label's colour.
  inner = np.ones((18, 26), bool)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      shifted = np.roll(labels[:18], (dy, dx), axis=(0, 1))
      inner &= shifted == labels[:18]
  assert inner.sum() > 100
  difference = np.abs(image[:18].astype(int) - COLOURS[labels[:18]])
  assert difference[inner].max() <= 2
