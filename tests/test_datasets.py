"""Opening a split: one image check, matching class folders, TFDS subsets.

The TFDS tests read a tiny TFDS dataset written into a temporary folder
(200 + 50 digits, in digits order), so they need no download.
"""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import tiny_config, write_image_folder
from helpers import evaluation_rows
from helpers import source_batches as _batches
from rotnet_jax import data as data_lib
from rotnet_jax.data import datasets
from rotnet_jax.data import digits
from rotnet_jax.data import image_check
from rotnet_jax.errors import InputError

PIPELINES = ('device', 'tfdata')
TFDS_NAME = 'rotnet_test_digits'
TFDS_SIZES = {'train': 200, 'test': 50}


def _rows(images):
  """Images as a multiset of byte strings, to compare sets of images."""
  return sorted(image.tobytes() for image in images)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A prepared TFDS dataset of the first digits, stored in digits order."""
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES)})
  split_datasets = {}
  for split, count in TFDS_SIZES.items():
    images, labels = digits.load(split)
    split_datasets[split] = [
        (i, {'image': images[i], 'label': int(labels[i])})
        for i in range(count)]
  # Unshuffled, so that TFDS's stored order is digits order.
  tfds.dataset_builders.store_as_tfds_dataset(
      name=TFDS_NAME, version='1.0.0', features=features,
      split_datasets=split_datasets, data_dir=data_dir,
      disable_shuffling=True)
  return data_dir


def _tfds_config(tfds_dir, tmp_path, **overrides):
  return tiny_config(dataset=TFDS_NAME, data_dir=tfds_dir,
                     cache_dir=str(tmp_path / 'cache'), **overrides)


def _first_per_class(split, count, k):
  """Indices of the first `k` examples of each class among the first
  `count` of digits' `split`."""
  _, labels = digits.load(split)
  return np.sort(np.concatenate([
      np.flatnonzero(labels[:count] == c)[:k]
      for c in range(digits.NUM_CLASSES)]))


# One image check.


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_digits_of_the_wrong_size(pipeline, one_device_mesh):
  config = tiny_config(pipeline=pipeline, image_size=28)
  with pytest.raises(InputError, match=r"^each image of dataset 'digits' is "
                     r'32x32, expected 28x28 \(config.image_size=28\)$'):
    data_lib.make_source(config, 'train', one_device_mesh, train=True)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_an_image_file_of_the_wrong_size(pipeline, tmp_path,
                                         one_device_mesh):
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(
      tmp_path / 'data' / 'train' / 'class_1' / 'big.png')
  config = tiny_config(pipeline=pipeline, dataset=str(tmp_path / 'data'),
                       batch_size=4, cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(InputError, match=r'^image file .*class_1/big\.png is '
                     r'36x40, expected 32x32 \(config.image_size=32\)$'):
    data_lib.make_source(config, 'train', one_device_mesh, train=True)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_tfds_images_of_the_wrong_size(pipeline, tfds_dir, tmp_path,
                                       one_device_mesh):
  config = _tfds_config(tfds_dir, tmp_path, pipeline=pipeline, image_size=28)
  with pytest.raises(InputError, match=rf"^each image of TFDS dataset "
                     rf"'{TFDS_NAME}' is 32x32, expected 28x28 "
                     r'\(config.image_size=28\)$'):
    data_lib.make_source(config, 'train', one_device_mesh, train=True)


def test_image_check_format_channels_and_varying_size():
  image_check.check('x', 32, height=32, width=32, file_format='PNG')
  with pytest.raises(InputError, match=r"^image file a\.gif is GIF, "
                     r"expected one of \('JPEG', 'PNG'\)$"):
    image_check.check('image file a.gif', 32, height=32, width=32,
                      file_format='GIF')
  with pytest.raises(InputError, match=r'^d has 1 colour channels, '
                     r'expected 3 \(RGB\)$'):
    image_check.check_shape('d', (5, 32, 32, 1), 32)
  with pytest.raises(InputError, match=r'^d is of varying size \(\?x\?\), '
                     r'expected 32x32 \(config.image_size=32\)$'):
    image_check.check_shape('d', (None, None, 3), 32)
  with pytest.raises(InputError, match=r'^d has shape \(32, 32\)'):
    image_check.check_shape('d', (32, 32), 32)


# Class folders of the evaluation split.


def _rename(path, new_name):
  os.rename(path, os.path.join(os.path.dirname(path), new_name))


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_a_test_split_with_other_class_folders_is_refused(pipeline, tmp_path,
                                                          one_device_mesh):
  root = tmp_path / 'data'
  write_image_folder(str(root), per_class=4, classes=4)
  _rename(root / 'test' / 'class_1', 'class_one')  # Would shift labels.
  config = tiny_config(pipeline=pipeline, dataset=str(root), batch_size=4,
                       cache_dir=str(tmp_path / 'cache'))
  data_lib.make_source(config, 'train', one_device_mesh, train=True)
  with pytest.raises(
      InputError,
      match=r"split 'test' has other class folders than the training split "
      r"'train' \(config.train_split\).*Only in 'test': \['class_one'\]; "
      r"only in 'train': \['class_1'\]\. Valid: the class folders of "
      r"'train', \['class_0', 'class_1', 'class_2', 'class_3'\]\."):
    data_lib.make_source(config, 'test', one_device_mesh, train=False)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_a_missing_or_extra_class_folder_is_named(pipeline, tmp_path,
                                                  one_device_mesh):
  root = tmp_path / 'data'
  write_image_folder(str(root), per_class=4)
  config = tiny_config(pipeline=pipeline, dataset=str(root), batch_size=4,
                       cache_dir=str(tmp_path / 'cache'))
  os.rename(root / 'test' / 'class_2', tmp_path / 'class_2')
  with pytest.raises(InputError, match=r"Only in 'test': none; only in "
                     r"'train': \['class_2'\]"):
    data_lib.make_source(config, 'test', one_device_mesh, train=False)
  os.rename(tmp_path / 'class_2', root / 'test' / 'class_2')
  os.rename(root / 'train' / 'class_0', tmp_path / 'class_0')
  # The split named by config.train_split is the reference.
  config.train_split, config.test_split = 'test', 'train'
  with pytest.raises(InputError, match=r"split 'train' has other class "
                     r"folders than the training split 'test'.*Only in "
                     r"'train': none; only in 'test': \['class_0'\]"):
    data_lib.make_source(config, 'train', one_device_mesh, train=False)


def test_long_class_folder_lists_are_cut(tmp_path, one_device_mesh):
  root = tmp_path / 'data'
  write_image_folder(str(root), per_class=2, classes=10)
  for c in range(10):
    _rename(root / 'test' / f'class_{c}', f'other_{c}')
  config = tiny_config(dataset=str(root), batch_size=4,
                       cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(InputError, match=r"only in 'train': \['class_0', .*"
                     r"'class_9'\]\. Valid"):
    data_lib.make_source(config, 'test', one_device_mesh, train=False)
  write_image_folder(str(root), per_class=2, classes=10,
                     split_sizes={'train': 2})
  for c in range(10, 12):
    (root / 'train' / f'class_{c}').mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
        root / 'train' / f'class_{c}' / '0.png')
  with pytest.raises(InputError, match=r"Valid: the class folders of "
                     r"'train', \['class_0', 'class_1', .*, \.\.\. "
                     r'\(12 in all\)\]\.$'):
    data_lib.make_source(config, 'test', one_device_mesh, train=False)


# TFDS datasets on both pipelines.


def test_tfds_evaluation_is_identical_in_both_sources(tfds_dir, tmp_path,
                                                      one_device_mesh):
  results = {}
  for pipeline in PIPELINES:
    config = _tfds_config(tfds_dir, tmp_path, pipeline=pipeline,
                          batch_size=16)
    source = data_lib.make_source(config, 'test', one_device_mesh,
                                  train=False)
    assert source.num_examples == 50 and source.num_classes == 10
    results[pipeline] = evaluation_rows(source)
  images, labels = digits.load('test')
  for result in results.values():
    np.testing.assert_array_equal(result['image'], images[:50])
    np.testing.assert_array_equal(result['label'], labels[:50])


@pytest.mark.parametrize('subset', [
    dict(examples_per_class=3, num_train_examples=0),
    dict(num_train_examples=40)])
def test_tfds_training_subsets_on_both_pipelines(subset, tfds_dir, tmp_path,
                                                 one_device_mesh):
  if 'examples_per_class' in subset:
    expected = _first_per_class('train', 200, 3)
  else:
    expected = np.arange(40) * 200 // 40
  images, labels = digits.load('train')
  for pipeline in PIPELINES:
    config = _tfds_config(tfds_dir, tmp_path, pipeline=pipeline,
                          batch_size=10, epoch_examples=120, **subset)
    split = datasets.open_split(config, 'train', train=True,
                                decoded=pipeline == 'device')
    np.testing.assert_array_equal(split.keep, expected)
    np.testing.assert_array_equal(split.labels, labels[expected])
    source = data_lib.make_source(config, 'train', one_device_mesh,
                                  train=True)
    assert source.num_examples == len(expected)
    assert source.steps_per_epoch == 12
    first = _batches(source, epoch=0)
    seen = np.concatenate([b['label'] for b in first])
    # 120 draws of 30 or 40 examples: every kept example 4 or 3 times.
    assert np.array_equal(np.bincount(seen, minlength=10),
                          np.bincount(np.repeat(labels[expected],
                                                120 // len(expected)),
                                      minlength=10))
    # Exactly the kept images: read back unaugmented, in order.
    source.train = False
    kept = np.concatenate([b['image'][b['mask'] > 0]
                           for b in _batches(source)])
    assert _rows(kept) == _rows(images[expected])
    # An epoch is the same whenever it runs.
    source.train = True
    for a, b in zip(first, _batches(source, epoch=0)):
      np.testing.assert_array_equal(a['image'], b['image'])
    assert not np.array_equal(first[0]['label'],
                              _batches(source, epoch=1)[0]['label'])


def _tfds_process_source(monkeypatch, config, mesh, process, processes):
  """The tf.data source of one process, as if `processes` processes ran."""
  from rotnet_jax.data import tfdata_source  # pylint: disable=g-import-not-at-top
  # Opened first: preparing the builder would wait for the other process.
  split = datasets.open_split(config, 'train', train=True, decoded=False)
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  monkeypatch.setattr(jax, 'process_index', lambda: process)
  source = tfdata_source.TFDataSource(
      split, mesh=mesh, batch_size=config.batch_size, train=True,
      seed=config.seed, epoch_length=config.epoch_examples)
  monkeypatch.undo()
  return source


@pytest.mark.parametrize('epoch_examples', [0, 90])
def test_tfds_subset_processes_get_equal_shares(epoch_examples, monkeypatch,
                                                tfds_dir, tmp_path,
                                                one_device_mesh):
  # The first 3 images of each class all lie in the first half of the
  # split, so contiguous halves would leave process 1 with none.
  expected = _first_per_class('train', 200, 3)
  assert expected.max() < 100
  config = _tfds_config(tfds_dir, tmp_path, pipeline='tfdata', batch_size=10,
                        num_train_examples=0, examples_per_class=3,
                        epoch_examples=epoch_examples)
  steps, passes = (9, 3) if epoch_examples else (3, 1)
  shares = []
  for process in range(2):
    source = _tfds_process_source(monkeypatch, config, one_device_mesh,
                                  process, 2)
    assert source.num_examples == 30 and source.steps_per_epoch == steps
    batches = list(source._dataset(0).as_numpy_iterator())
    assert [len(b['label']) for b in batches] == [5] * steps
    # This process's share, unaugmented and in order.
    source.train = False
    share = [b for b in source._dataset(0).as_numpy_iterator()]
    mask = np.concatenate([b['mask'] for b in share]) > 0
    share = {k: np.concatenate([b[k] for b in share])[mask]
             for k in ('image', 'label')}
    shares.append(share['image'])
    # Each example of the share is drawn `passes` times.
    drawn = np.concatenate([b['label'] for b in batches])
    np.testing.assert_array_equal(
        np.bincount(drawn, minlength=10),
        passes * np.bincount(share['label'], minlength=10))
  # Equal, disjoint shares that together are the kept images.
  images, _ = digits.load('train')
  assert len(shares[0]) == len(shares[1]) == 15
  assert _rows(np.concatenate(shares)) == _rows(images[expected])


# Semi-supervised subsets follow the original release's order.

SHUFFLED_TFDS_NAME = 'rotnet_test_shuffled_digits'


@pytest.fixture(scope='module')
def shuffled_tfds_dir(tmp_path_factory):
  """Digits stored in a shuffled order, each with an ``id`` naming its
  original index (``train_00042``), as TFDS stores CIFAR-10.

  Returns:
    ``(data_dir, stored)``: ``stored[p]`` is the original index of the
    example at stored position ``p``.
  """
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = str(tmp_path_factory.mktemp('tfds_shuffled'))
  features = tfds.features.FeaturesDict({
      'id': tfds.features.Text(),
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES)})
  stored = np.random.default_rng(0).permutation(TFDS_SIZES['train'])
  split_datasets = {}
  for split, count in TFDS_SIZES.items():
    images, labels = digits.load(split)
    order = stored if split == 'train' else np.arange(count)
    split_datasets[split] = [
        (p, {'id': f'{split}_{i:05d}', 'image': images[i],
             'label': int(labels[i])}) for p, i in enumerate(order)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name=SHUFFLED_TFDS_NAME, version='1.0.0', features=features,
      split_datasets=split_datasets, data_dir=data_dir,
      disable_shuffling=True)
  return data_dir, stored


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_first_k_per_class_in_original_order(pipeline, shuffled_tfds_dir,
                                             tmp_path):
  data_dir, stored = shuffled_tfds_dir
  config = tiny_config(dataset=SHUFFLED_TFDS_NAME, data_dir=data_dir,
                       cache_dir=str(tmp_path / 'cache'), pipeline=pipeline,
                       examples_per_class=3, num_train_examples=0)
  split = datasets.open_split(config, 'train', train=True,
                              decoded=pipeline == 'device')
  # The first 3 of each class by original index, not by stored position.
  expected_original = _first_per_class('train', TFDS_SIZES['train'], 3)
  assert sorted(stored[split.keep]) == list(expected_original)
  assert list(split.keep) == sorted(split.keep)
  _, labels = digits.load('train')
  np.testing.assert_array_equal(split.labels, labels[stored[split.keep]])
  assert datasets.subset_order(config) == (
      'original release order (TFDS id field)')
