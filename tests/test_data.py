"""Both data sources: same batches, augmentation statistics, sharding."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from PIL import Image

import helpers
from helpers import REPO_ROOT, tiny_config, write_image_folder
from helpers import evaluation_rows
from helpers import source_batches as _batches
from rotnet_jax import data as data_lib
from rotnet_jax.data import DeviceSource
from rotnet_jax.data import arrays
from rotnet_jax.data import datasets
from rotnet_jax.data import digits
from rotnet_jax.data import shuffle
from rotnet_jax.errors import InputError

PIPELINES = ('device', 'tfdata')


def test_digits_is_bundled_real_data():
  train_images, train_labels = digits.load('train')
  test_images, test_labels = digits.load('test')
  assert train_images.shape == (1500, 32, 32, 3)
  assert test_images.shape == (297, 32, 32, 3)
  assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
  assert set(np.unique(train_labels)) == set(range(10))
  assert train_images.max() > 200 and train_images.min() == 0
  # Grey digits repeated over RGB.
  np.testing.assert_array_equal(train_images[..., 0], train_images[..., 2])
  with pytest.raises(ValueError, match='splits'):
    digits.load('validation')


def test_dataset_kind():
  assert datasets.dataset_kind('digits') == 'digits'
  assert datasets.dataset_kind('cifar10') == 'tfds'
  assert datasets.dataset_kind('/no/such/folder') == 'folder'
  assert datasets.dataset_kind('./relative') == 'folder'


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_train_batches_shape_dtype_range(pipeline, one_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=128,
                       num_train_examples=0)
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  assert source.steps_per_epoch == 1500 // 128
  batches = _batches(source)
  assert len(batches) == source.steps_per_epoch
  for batch in batches:
    assert batch['image'].shape == (128, 32, 32, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32 and batch['label'].shape == (128,)
    np.testing.assert_array_equal(batch['mask'], 1.0)
  images = np.concatenate([b['image'] for b in batches])
  assert images.min() == 0 and images.max() >= 250
  labels = np.concatenate([b['label'] for b in batches])
  assert len(np.unique(labels)) == 10


def test_both_sources_shuffle_alike_and_evaluate_identically(one_device_mesh):
  train = {p: _batches(data_lib.make_source(
      tiny_config(pipeline=p, batch_size=128), 'train', one_device_mesh,
      train=True)) for p in PIPELINES}
  # Same per-epoch order (labels), independent augmentation draws.
  for device_batch, tf_batch in zip(train['device'], train['tfdata']):
    np.testing.assert_array_equal(device_batch['label'], tf_batch['label'])
  evaluation = {p: _batches(data_lib.make_source(
      tiny_config(pipeline=p, batch_size=128), 'test', one_device_mesh,
      train=False)) for p in PIPELINES}
  assert len(evaluation['device']) == len(evaluation['tfdata']) == 3
  for device_batch, tf_batch in zip(evaluation['device'],
                                    evaluation['tfdata']):
    np.testing.assert_array_equal(device_batch['mask'], tf_batch['mask'])
    real = device_batch['mask'] > 0  # Padding content may differ.
    for key in ('image', 'label'):
      np.testing.assert_array_equal(device_batch[key][real],
                                    tf_batch[key][real])


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_evaluation_sees_every_example_once(pipeline, one_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=128)
  source = data_lib.make_source(config, 'test', one_device_mesh, train=False)
  batches = _batches(source)
  masks = np.concatenate([b['mask'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])[masks > 0]
  test_images, _ = digits.load('test')
  assert masks.sum() == 297 and len(masks) == 3 * 128
  np.testing.assert_array_equal(images, test_images)  # In order, unaugmented.


def test_image_folder_decodes_identically_in_both_sources(tmp_path,
                                                          one_device_mesh):
  written = write_image_folder(str(tmp_path), per_class=8)
  results = {}
  for pipeline in PIPELINES:
    config = tiny_config(pipeline=pipeline, dataset=str(tmp_path),
                         batch_size=8, cache_dir=str(tmp_path / 'cache'))
    source = data_lib.make_source(config, 'test', one_device_mesh,
                                  train=False)
    assert source.num_examples == 12 and source.num_classes == 3
    results[pipeline] = evaluation_rows(source)
  # JPEG files decode to the same pixels with PIL and with TensorFlow.
  np.testing.assert_array_equal(results['device']['image'],
                                results['tfdata']['image'])
  np.testing.assert_array_equal(results['device']['label'],
                                written['test'][1])
  # PNG files (even names) are lossless.
  np.testing.assert_array_equal(results['device']['image'][0],
                                written['test'][0][0])


def test_folder_cache_is_reused_and_refreshed(tmp_path):
  write_image_folder(str(tmp_path / 'data'), per_class=4)
  cache = str(tmp_path / 'cache')
  config = tiny_config(dataset=str(tmp_path / 'data'), cache_dir=cache)

  def load():
    return datasets.open_split(config, 'train', train=False, decoded=True)

  first = load()
  cached = os.listdir(cache)
  assert len(cached) == 1 and cached[0].endswith('.npy')
  again = load()
  np.testing.assert_array_equal(first.images, again.images)
  assert os.listdir(cache) == cached
  # Changing a file invalidates the cache.
  Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(
      tmp_path / 'data' / 'train' / 'class_0' / '0.png')
  changed = load()
  assert (changed.images[0] == 7).all()
  assert len(os.listdir(cache)) == 2


def _marker_images(count):
  """Images that are black but for one bright pixel at (row 10, col 5)."""
  images = np.zeros((count, 32, 32, 3), np.uint8)
  images[:, 10, 5] = 255
  return images


def _crop_offsets_and_flips(images):
  """Recovers each image's crop offset and flip from the marker's position.

  After 4-pixel padding the marker sits at (14, 9); a crop at (dy, dx) moves
  it to (14 - dy, 9 - dx), i.e. column 1..9, and a flip to column
  31 - (9 - dx) = 22..30. The two column ranges do not overlap.
  """
  offsets, flips = [], []
  for image in images:
    rows, cols = np.nonzero(image[..., 0])
    assert len(rows) == 1, 'the marker is never cropped away'
    row, col = rows[0], cols[0]
    flipped = col >= 22
    offsets.append((14 - row, col - 22 if flipped else 9 - col))
    flips.append(flipped)
  return np.asarray(offsets), np.asarray(flips)


def _check_augmentation_statistics(images):
  offsets, flips = _crop_offsets_and_flips(images)
  n = len(flips)
  assert offsets.min() == 0 and offsets.max() == 8
  for axis in range(2):
    counts = np.bincount(offsets[:, axis], minlength=9)
    # Chi-square against uniform on 0..8 (8 dof; 99.9% quantile 26.1).
    expected = n / 9
    assert ((counts - expected) ** 2 / expected).sum() < 26.1, counts
  # Flip rate 1/2 within 4.5 standard deviations.
  assert abs(flips.mean() - 0.5) < 4.5 * 0.5 / np.sqrt(n)


def test_device_augmentation_statistics(one_device_mesh):
  data = arrays.SplitArrays(_marker_images(2000), np.zeros(2000, np.int32),
                            1)
  source = DeviceSource(data, mesh=one_device_mesh, batch_size=1000,
                        train=True, seed=0)
  images = np.concatenate([b['image'] for b in _batches(source)])
  _check_augmentation_statistics(images)


def test_tfdata_augmentation_statistics(tmp_path, one_device_mesh):
  class_dir = tmp_path / 'train' / 'marker'
  class_dir.mkdir(parents=True)
  for i, image in enumerate(_marker_images(250)):
    Image.fromarray(image).save(class_dir / f'{i}.png')
  config = tiny_config(pipeline='tfdata', dataset=str(tmp_path),
                       batch_size=250)
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  images = np.concatenate([b['image'] for epoch in range(4)
                           for b in _batches(source, epoch)])
  _check_augmentation_statistics(images)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_epochs_are_reproducible_and_differ(pipeline, one_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=500)
  first = _batches(data_lib.make_source(config, 'train', one_device_mesh,
                                        train=True), epoch=3)
  again = _batches(data_lib.make_source(config, 'train', one_device_mesh,
                                        train=True), epoch=3)
  other = _batches(data_lib.make_source(config, 'train', one_device_mesh,
                                        train=True), epoch=4)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(first[0]['label'], other[0]['label'])
  if pipeline == 'device':
    # Each example is augmented anew: its epoch-4 crop and flip are not its
    # epoch-3 ones (the same again by chance: 1 in 162).
    source = data_lib.make_source(config, 'train', one_device_mesh,
                                  train=True)

    def by_example(batches, epoch):
      order = np.concatenate([np.asarray(inputs['indices'][inputs['step']])
                              for inputs in source.epoch(epoch)])
      assert sorted(order) == list(range(500))
      return np.concatenate([b['image'] for b in batches])[np.argsort(order)]

    differ = [not np.array_equal(a, b) for a, b in zip(
        by_example(first, 3), by_example(other, 4))]
    assert np.mean(differ) > 0.95, np.mean(differ)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_a_training_subset_is_evenly_spaced(pipeline, one_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=50,
                       num_train_examples=300)
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  assert source.num_examples == 300 and source.steps_per_epoch == 6
  labels = np.concatenate([b['label'] for b in _batches(source)])
  _, all_labels = digits.load('train')
  np.testing.assert_array_equal(np.sort(labels),
                                np.sort(all_labels[::5]))
  # Evaluation always uses the whole split.
  test = data_lib.make_source(config, 'test', one_device_mesh, train=False)
  assert test.num_examples == 297


def test_first_k_per_class_in_dataset_order():
  labels = np.asarray([2, 0, 2, 1, 0, 2, 1, 0, 0, 1])
  keep = datasets.training_subset(labels, examples_per_class=2)
  np.testing.assert_array_equal(keep, [0, 1, 2, 3, 4, 6])
  assert np.bincount(labels[keep]).tolist() == [2, 2, 2]
  with pytest.raises(InputError, match='examples_per_class=4 is more than '
                     r'the smallest class has \(3 images of class 1\)'):
    datasets.training_subset(labels, examples_per_class=4)
  with pytest.raises(InputError, match='not both'):
    datasets.training_subset(labels, examples_per_class=1, num_examples=5)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_k_per_class_with_a_fixed_epoch_length(pipeline, one_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=50, num_train_examples=0,
                       examples_per_class=20, epoch_examples=1000)
  source = data_lib.make_source(config, 'train', one_device_mesh, train=True)
  assert source.num_examples == 200 and source.steps_per_epoch == 20
  images, labels = digits.load('train')
  expected = np.concatenate([np.flatnonzero(labels == c)[:20]
                             for c in range(10)])
  batches = _batches(source)
  seen = np.concatenate([b['label'] for b in batches])
  assert len(seen) == 1000
  # Every kept image is drawn 5 times per epoch, 100 per class.
  assert np.bincount(seen).tolist() == [100] * 10
  # Exactly the first 20 images of each class: compare the pixels, read
  # back through an unaugmented source with the same subset.
  source.train = False
  kept = np.concatenate([b['image'][b['mask'] > 0]
                         for b in _batches(source)])
  rows = lambda x: {r.tobytes() for r in x}  # pylint: disable=unnecessary-lambda-assignment
  assert rows(kept) == rows(images[expected])


def test_longer_epochs_repeat_permutations():
  order = shuffle.epoch_order(10, seed=0, epoch=1, length=25)
  assert len(order) == 25
  for start in (0, 10):
    assert sorted(order[start:start + 10]) == list(range(10))


def test_epoch_order_is_a_permutation():
  order = shuffle.epoch_order(100, seed=1, epoch=2)
  np.testing.assert_array_equal(np.sort(order), np.arange(100))
  np.testing.assert_array_equal(order, shuffle.epoch_order(100, 1, 2))


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_a_global_batch_is_split_over_eight_devices(pipeline,
                                                    eight_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=64)
  source = data_lib.make_source(config, 'train', eight_device_mesh,
                                train=True)
  batch = jax.jit(source.materialize)(source.resident,
                                      next(source.epoch(0)))
  image = batch['image']
  assert image.shape == (64, 32, 32, 3)
  assert image.sharding.spec == PartitionSpec('data')
  shards = sorted(image.addressable_shards, key=lambda s: s.index[0].start)
  assert len(shards) == 8
  assert {s.data.shape for s in shards} == {(8, 32, 32, 3)}
  assert len({s.device for s in shards}) == 8
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(s.data) for s in shards]), np.asarray(image))


# A run in a fresh process: the slow tier.
@pytest.mark.slow
def test_device_source_imports_no_tensorflow(tmp_path):
  # A fresh process: build the device source, gather a batch and take a
  # train step, then look for TensorFlow among the loaded modules.
  script = textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {os.path.join(REPO_ROOT, 'tests')!r})
      from helpers import tiny_config
      from rotnet_jax.training import train
      config = tiny_config(num_epochs=1, cache_dir={str(tmp_path)!r})
      train.train_and_evaluate(config, {str(tmp_path / 'run')!r})
      loaded = [m for m in sys.modules if m.split('.')[0] in
                ('tensorflow', 'tensorflow_datasets')]
      print('LOADED', loaded)
      assert not loaded, loaded
  ''')
  # One device (not the session's 8 fake ones): what is imported does not
  # depend on it, and an 8-device program takes far longer to compile.
  env = helpers.one_device_env()
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'LOADED []' in result.stdout


def _local_batches(monkeypatch, mesh, process, processes, epoch=0):
  """One process's host batches, as if `processes` processes ran."""
  from rotnet_jax.data import tfdata_source  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  monkeypatch.setattr(jax, 'process_index', lambda: process)
  # Every third example: 500 evenly spaced of the 1,500.
  config = tiny_config(pipeline='tfdata', batch_size=100,
                       num_train_examples=500)
  split = datasets.open_split(config, 'train', train=True, decoded=False)
  np.testing.assert_array_equal(split.keep, np.arange(1500)[::3])
  source = tfdata_source.TFDataSource(
      split, mesh=mesh, batch_size=100, train=True, seed=config.seed)
  monkeypatch.undo()
  return list(source._dataset(epoch).as_numpy_iterator())


def test_tfdata_processes_split_each_global_batch(monkeypatch,
                                                  one_device_mesh):
  single = _local_batches(monkeypatch, one_device_mesh, 0, 1)
  shares = [_local_batches(monkeypatch, one_device_mesh, p, 2)
            for p in range(2)]
  assert len(single) == len(shares[0]) == len(shares[1]) == 5
  for whole, first, second in zip(single, *shares):
    assert len(first['image']) == len(second['image']) == 50
    # Disjoint shares that together are the one-process batch, with the
    # same augmentation for every example.
    joined = np.concatenate([first['image'], second['image']])
    order = lambda x: np.lexsort(x.reshape(len(x), -1).T)  # pylint: disable=unnecessary-lambda-assignment
    np.testing.assert_array_equal(joined[order(joined)],
                                  whole['image'][order(whole['image'])])
    assert not np.array_equal(first['label'], second['label'])


class _RecordedIterator:
  """A tf.data numpy iterator that notes in `events` each batch read, the
  read that finds the end, and its own release."""

  def __init__(self, iterator, events):
    self._iterator = iterator
    self._events = events

  def __iter__(self):
    return self

  def __next__(self):
    try:
      batch = next(self._iterator)
    except StopIteration:
      self._events.append('end read')
      raise
    self._events.append('read')
    return batch

  def __del__(self):
    self._events.append('released')


class _RecordedDataset:
  """A ``tf.data.Dataset`` whose numpy iterator is a _RecordedIterator."""

  def __init__(self, dataset, events):
    self._dataset = dataset
    self._events = events

  def as_numpy_iterator(self):
    return _RecordedIterator(self._dataset.as_numpy_iterator(), self._events)


def _wait_for(events, event, seconds=60):
  """Whether `event` is in `events` within `seconds`; then waits for the
  teardown threads to end, so that no pipeline outlives the test."""
  deadline = time.monotonic() + seconds
  while event not in events and time.monotonic() < deadline:
    time.sleep(0.01)
  for thread in threading.enumerate():
    if thread.name == 'tfdata-teardown':
      thread.join(max(deadline - time.monotonic(), 1))
  return event in events


def test_tfdata_yields_its_last_batches_before_its_teardown(
    monkeypatch, one_device_mesh):
  """Releasing a tf.data iterator waits for the pipeline's threads to stop
  (5 ms to 2.5 s on the project's loaded 2-core machine): the epoch's last
  batches must not wait for it (nor for a read that finds the end), the
  batches must stay those of the pipeline, and the teardown must still
  happen, also when the caller stops early."""
  config = tiny_config(pipeline='tfdata', batch_size=100)
  source = data_lib.make_source(config, 'train', one_device_mesh,
                                train=True)
  # pylint: disable-next=protected-access
  expected = list(source._dataset(0).as_numpy_iterator())
  assert len(expected) == source.steps_per_epoch == 5
  real_dataset = source._dataset  # pylint: disable=protected-access
  events = []
  monkeypatch.setattr(source, '_dataset', lambda *args, **kwargs: (
      _RecordedDataset(real_dataset(*args, **kwargs), events)))

  got = []
  for batch in source.epoch(0):
    events.append('yielded')
    got.append(jax.tree.map(np.asarray, batch))
  last_yield = len(events) - 1 - events[::-1].index('yielded')
  assert 'end read' not in events[:last_yield], events
  assert 'released' not in events[:last_yield], events
  assert events.count('yielded') == events.count('read') == 5, events
  assert _wait_for(events, 'released'), events
  # The same batches, in the same order.
  for a, b in zip(got, expected, strict=True):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])

  # A run resumed mid-epoch: the tail of the same epoch.
  events.clear()
  tail = [jax.tree.map(np.asarray, b) for b in source.epoch(0, start_step=3)]
  for a, b in zip(tail, expected[3:], strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert _wait_for(events, 'released'), events

  # A caller that stops after one batch (a preempted run) still releases
  # the pipeline, without reading on to its end.
  events.clear()
  batches = source.epoch(0)
  next(batches)
  batches.close()
  assert _wait_for(events, 'released'), events
  assert 'end read' not in events, events
