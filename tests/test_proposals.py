"""Region proposals (rotnet_jax.data.proposals, rotnet-proposals): selective
search's boxes in the package's convention, deterministic, resumable,
stored and read back checked; R-CNN's MATLAB files converted."""

import os
import subprocess
import sys
import types
from unittest import mock

import numpy as np
import pytest
from absl import flags
from PIL import Image

import helpers
import voc_folder
from rotnet_jax.commands import cli
from rotnet_jax.commands import proposals as command
from rotnet_jax.data import proposals
from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError



def _has_opencv_contrib() -> bool:
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return hasattr(cv2, 'ximgproc')


# Tests that run selective search; the file's checks need no OpenCV.
needs_opencv = pytest.mark.skipif(
    not _has_opencv_contrib(),
    reason="needs pip install 'rotnet-jax[detection]' (cv2.ximgproc)")


def _mosaic(seed: int, height: int = 48, width: int = 64,
            rectangles: int = 60) -> np.ndarray:
  """A grey image with coloured rectangles: selective search finds dozens
  of regions in it (79 at seed 0) in a few milliseconds."""
  rng = np.random.default_rng(seed)
  image = np.full((height, width, 3), 128, np.uint8)
  for _ in range(rectangles):
    y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
    image[y:y + rng.integers(3, 10), x:x + rng.integers(3, 10)] = (
        rng.integers(0, 255, 3))
  return image


def _split(folder, count: int = 5, name: str = 'trainval'):
  """A split of `count` mosaic PNGs (what compute and load read of a
  voc.DetectionSplit)."""
  folder = str(folder)
  os.makedirs(folder, exist_ok=True)
  ids, paths, sizes = [], [], []
  for k in range(count):
    height, width = (48, 64) if k % 2 == 0 else (40, 56)
    path = os.path.join(folder, f'{k:06d}.png')
    Image.fromarray(_mosaic(k, height, width)).save(path)
    ids.append(f'{k:06d}')
    paths.append(path)
    sizes.append((height, width))
  return types.SimpleNamespace(
      dataset=folder, split=name, year_dir=folder, ids=tuple(ids),
      paths=tuple(paths), sizes=np.asarray(sizes, np.int32))


def _expected(split) -> list[np.ndarray]:
  return [proposals.selective_search(np.asarray(Image.open(p).convert('RGB')))
          for p in split.paths]


# Selective search on one image.


@needs_opencv
def test_a_rectangle_gives_its_box_in_inclusive_pixels():
  image = np.zeros((48, 64, 3), np.uint8)
  image[10:30, 20:50] = 250  # Rows 10..29, columns 20..49.
  found = proposals.selective_search(image)
  assert found.dtype == np.float32 and found.shape[1] == 4
  rows = {tuple(b) for b in found.tolist()}
  assert (20, 10, 49, 29) in rows
  assert (0, 0, 63, 47) in rows  # The whole image, its last pixel 63.
  assert len(rows) == len(found)  # No duplicates.


@needs_opencv
def test_the_same_image_gives_the_same_boxes_in_the_same_order():
  image = _mosaic(0)
  first = proposals.selective_search(image)
  assert len(first) > 50
  proposals.selective_search(_mosaic(1))  # Draws from the C generator.
  np.testing.assert_array_equal(proposals.selective_search(image), first)


def test_duplicates_are_dropped_keeping_the_first():
  rects = [(1, 2, 3, 4), (0, 0, 5, 5), (1, 2, 3, 4), (2, 2, 1, 1)]

  class Search:

    def __getattr__(self, name):
      return lambda *args: None

    def process(self):
      return np.asarray(rects)

  cv2 = mock.MagicMock()
  cv2.ximgproc.segmentation.createSelectiveSearchSegmentation = Search
  with mock.patch.object(proposals, '_import_cv2', return_value=cv2):
    found = proposals.selective_search(np.zeros((8, 8, 3), np.uint8))
  # (x, y, w, h) -> (x, y, x + w - 1, y + h - 1), first occurrences.
  np.testing.assert_array_equal(
      found, [[1, 2, 3, 5], [0, 0, 4, 4], [2, 2, 2, 2]])


def test_missing_opencv_contrib_says_how_to_install_it():
  with mock.patch.dict(sys.modules, {'cv2': None}):
    with pytest.raises(InputError, match=r"pip install 'rotnet-jax\["
                       r"detection\]'"):
      proposals.selective_search(np.zeros((8, 8, 3), np.uint8))
  with mock.patch.dict(sys.modules, {'cv2': types.SimpleNamespace(
      __version__='5.1.0')}):
    with pytest.raises(InputError, match=r'cv2\.ximgproc.*5\.1\.0.*'
                       r'detection'):
      proposals.selective_search(np.zeros((8, 8, 3), np.uint8))


# The file: compute, load.


@needs_opencv
def test_compute_writes_the_format_and_load_reads_it_back(tmp_path):
  split = _split(tmp_path / 'images')
  out = str(tmp_path / 'p.npz')
  summary = proposals.compute(split, out)
  expected = _expected(split)
  with np.load(out) as f:
    assert sorted(f.files) == sorted(proposals.KEYS)
    assert f['ids'].tolist() == list(split.ids)
    assert f['image_sizes'].dtype == np.int32
    np.testing.assert_array_equal(f['image_sizes'], split.sizes)
    assert f['offsets'].dtype == np.int64
    assert f['offsets'].tolist() == np.cumsum(
        [0] + [len(b) for b in expected]).tolist()
    assert f['boxes'].dtype == np.float32
    assert str(f['method']) == 'selective_search_fast'
  loaded = proposals.load(out, split)
  assert len(loaded) == len(expected)
  for got, want in zip(loaded, expected):
    np.testing.assert_array_equal(got, want)
  total = sum(len(b) for b in expected)
  assert summary['images'] == 5 and summary['computed'] == 5
  assert summary['proposals'] == total
  assert summary['mean_proposals'] == pytest.approx(total / 5)
  assert summary['path'] == out
  assert sorted(os.listdir(tmp_path)) == ['images', 'p.npz']  # No partial.
  cut = proposals.load(out, split, max_proposals=3)
  for got, want in zip(cut, expected):
    np.testing.assert_array_equal(got, want[:3])


@needs_opencv
def test_an_interrupted_run_resumes_without_recomputing_chunks(tmp_path):
  split = _split(tmp_path / 'images', count=5)
  out = str(tmp_path / 'p.npz')
  real = proposals._propose_file  # pylint: disable=protected-access
  calls = []
  interrupt = [True]

  def counted(path, mode):
    calls.append(os.path.basename(path))
    # Ctrl-C at image 3: chunk 0 (images 0, 1) is saved, chunk 1 is not.
    if len(calls) == 4 and interrupt[0]:
      raise KeyboardInterrupt
    return real(path, mode)

  with mock.patch.object(proposals, '_propose_file', counted):
    with pytest.raises(KeyboardInterrupt):
      proposals.compute(split, out, chunk_size=2)
    assert not os.path.exists(out)
    assert sorted(os.listdir(out + '.partial')) == ['chunk_00000.npz',
                                                    'manifest.json']
    calls.clear()
    interrupt[0] = False
    summary = proposals.compute(split, out, chunk_size=2)
  assert calls == ['000002.png', '000003.png', '000004.png']
  assert summary['computed'] == 3
  assert not os.path.exists(out + '.partial')
  for got, want in zip(proposals.load(out, split), _expected(split)):
    np.testing.assert_array_equal(got, want)


@needs_opencv
def test_an_unfinished_run_of_other_images_is_refused(tmp_path):
  out = str(tmp_path / 'p.npz')
  split = _split(tmp_path / 'images', count=3)
  with mock.patch.object(proposals, '_propose_file',
                         side_effect=KeyboardInterrupt):
    with pytest.raises(KeyboardInterrupt):
      proposals.compute(split, out, chunk_size=2)
  before = sorted(os.listdir(out + '.partial'))
  other = _split(tmp_path / 'images', count=2)
  with pytest.raises(InputError, match=r'p\.npz\.partial are of other '
                     r'images.*3 images.*now selective_search_fast, 2 '
                     'images'):
    proposals.compute(other, out, chunk_size=2)
  with pytest.raises(InputError, match='quality'):
    proposals.compute(split, out, chunk_size=2, mode='quality')
  assert sorted(os.listdir(out + '.partial')) == before
  assert not os.path.exists(out)


@needs_opencv
def test_compute_refuses_bad_settings_before_writing(tmp_path):
  split = _split(tmp_path / 'images', count=1)
  out = tmp_path / 'p.npz'
  cases = [
      (dict(output=str(out), mode='slow'), "mode 'slow' is not one of fast"),
      (dict(output=str(out), jobs=0), 'jobs=0'),
      (dict(output=str(tmp_path / 'p.txt')), r'must end in \.npz'),
      (dict(output=str(tmp_path / 'images')), 'must end in .npz'),
  ]
  for kwargs, message in cases:
    with pytest.raises(InputError, match=message):
      proposals.compute(split, **kwargs)
  out.write_bytes(b'keep')
  with pytest.raises(InputError, match='already exists: pass --overwrite'):
    proposals.compute(split, str(out))
  assert out.read_bytes() == b'keep'
  assert sorted(os.listdir(tmp_path)) == ['images', 'p.npz']


@needs_opencv
def test_an_image_of_another_size_than_annotated_is_named(tmp_path):
  split = _split(tmp_path / 'images', count=2)
  split.sizes[1] = (41, 56)
  with pytest.raises(InputError, match=r'000001\.png is 56x40 \(width x '
                     r'height\), its annotation says 56x41'):
    proposals.compute(split, str(tmp_path / 'p.npz'))
  assert not os.path.exists(tmp_path / 'p.npz')


def _write(path, **arrays):
  with open(path, 'wb') as f:
    np.savez(f, **arrays)
  return str(path)


def _valid_arrays(split):
  """The arrays of a valid file for `split`: 2 boxes per image."""
  per_image = [np.asarray([[0, 0, w - 1, h - 1], [1, 2, 5, 7]], np.float32)
               for h, w in split.sizes]
  return proposals._pack(  # pylint: disable=protected-access
      split.ids, split.sizes, per_image, 'selective_search_fast')


def test_load_names_the_file_and_the_entry_of_each_defect(tmp_path):
  split = _split(tmp_path / 'images', count=3)
  good = _valid_arrays(split)
  assert len(proposals.load(_write(tmp_path / 'ok.npz', **good), split)) == 3

  def refused(message, **changes):
    arrays = dict(good, **changes)
    path = _write(tmp_path / 'bad.npz', **{k: v for k, v in arrays.items()
                                           if v is not None})
    with pytest.raises(InputError) as raised:
      proposals.load(path, split)
    text = str(raised.value)
    assert '\n' not in text and path in text, text
    assert message in text, text

  refused("has no 'offsets'", offsets=None)
  refused('holds proposals for 2 images, the split \'trainval\' has 3',
          ids=good['ids'][:2], image_sizes=good['image_sizes'][:2],
          offsets=good['offsets'][:3], boxes=good['boxes'][:4])
  refused("image 1 is '000009', the split 'trainval' has '000001' there",
          ids=np.asarray(['000000', '000009', '000002']))
  sizes = good['image_sizes'].copy()
  sizes[2] = (50, 64)
  refused('image 000002 (index 2) is 64x50 there, 64x48', image_sizes=sizes)
  offsets = good['offsets'].copy()
  offsets[1] = 0  # Image 0 has none, image 1 four.
  refused('image 000000 (index 0) has no proposals', offsets=offsets)
  boxes = good['boxes'].copy()
  boxes[3] = (10, 2, 4, 7)  # Image 1's box 1: x2 < x1.
  refused('image 000001 (index 1): box 1: (x1, y1, x2, y2) = (10, 2, 4, 7) '
          'is empty', boxes=boxes)
  boxes = good['boxes'].copy()
  boxes[4] = (0, 0, 64, 47)  # Image 2's box 0: one column too wide.
  refused('image 000002 (index 2): box 0: (x1, y1, x2, y2) = (0, 0, 64, 47) '
          'lies outside the image', boxes=boxes)
  boxes = good['boxes'].copy()
  boxes[1, 0] = np.nan
  refused('image 000000 (index 0): box 1', boxes=boxes)
  refused('offsets', offsets=good['offsets'][::-1])
  (tmp_path / 'text.npz').write_text('not a zip')
  with pytest.raises(InputError, match=r'text\.npz is not a readable \.npz'):
    proposals.load(str(tmp_path / 'text.npz'), split)
  np.save(tmp_path / 'one.npy', np.zeros(3))
  os.replace(tmp_path / 'one.npy', tmp_path / 'one.npz')
  with pytest.raises(InputError, match=r'one\.npz is not a readable'):
    proposals.load(str(tmp_path / 'one.npz'), split)
  with pytest.raises(MissingInputError, match='none.npz does not exist'):
    proposals.load(str(tmp_path / 'none.npz'), split)


def test_rcnn_matlab_files_are_converted(tmp_path):
  scipy_io = pytest.importorskip('scipy.io')
  split = _split(tmp_path / 'images', count=2)
  images = np.empty((2, 1), object)
  images[0, 0], images[1, 0] = '000000', '000001'
  boxes = np.empty((1, 2), object)
  # (y1, x1, y2, x2), 1-based: the whole 64x48 image, then a box.
  boxes[0, 0] = np.asarray([[1, 1, 48, 64], [3, 2, 10, 20]], np.float64)
  boxes[0, 1] = np.asarray([[5, 6, 40, 56]], np.float64)
  path = str(tmp_path / 'voc_2007_trainval.mat')
  scipy_io.savemat(path, {'images': images, 'boxes': boxes})
  loaded = proposals.load(path, split)
  np.testing.assert_array_equal(loaded[0], [[0, 0, 63, 47], [1, 2, 19, 9]])
  np.testing.assert_array_equal(loaded[1], [[5, 4, 55, 39]])
  assert loaded[0].dtype == np.float32
  # The same checks as an .npz.
  boxes[0, 1] = np.asarray([[5, 6, 41, 56]], np.float64)  # 41 > 40 rows.
  scipy_io.savemat(path, {'images': images, 'boxes': boxes})
  with pytest.raises(InputError, match=r'trainval\.mat: image 000001 '
                     r'\(index 1\): box 0: .* lies outside'):
    proposals.load(path, split)
  images[1, 0] = '000007'
  scipy_io.savemat(path, {'images': images, 'boxes': boxes})
  with pytest.raises(InputError, match="image 1 is '000007'"):
    proposals.load(path, split)
  scipy_io.savemat(path, {'boxes': boxes[:, :1]})
  with pytest.raises(InputError, match='holds proposals for 1 images'):
    proposals.load(path, split)


def test_default_path_is_beside_the_data(tmp_path):
  split = _split(tmp_path / 'VOC2007', count=1, name='test')
  assert proposals.default_path(split) == os.path.join(
      str(tmp_path / 'VOC2007'), 'proposals',
      'selective_search_fast_test.npz')
  assert proposals.default_path(split, 'quality').endswith(
      'selective_search_quality_test.npz')


# The command.


@pytest.fixture(scope='module')
def devkit(tmp_path_factory):
  return voc_folder.write_vocdevkit(str(tmp_path_factory.mktemp('voc')))


@needs_opencv
def test_compute_splits_caches_every_split_beside_the_data(devkit):
  summaries = proposals.compute_splits(devkit, 'all', jobs=1)
  assert [s['path'] for s in summaries] == [
      os.path.join(devkit, 'VOC2007', 'proposals',
                   f'selective_search_fast_{s}.npz')
      for s in ('trainval', 'test')]
  for name in ('trainval', 'test'):
    split = voc.open_detection(devkit, name)
    loaded = proposals.load(proposals.default_path(split), split)
    assert len(loaded) == len(split.ids) and all(len(b) for b in loaded)
  with pytest.raises(InputError, match='--output names one file'):
    proposals.compute_splits(devkit, 'all', output='x.npz')
  # A file already there is checked and kept, never computed again; the
  # missing one is computed.
  os.remove(summaries[0]['path'])
  test_file = summaries[1]['path']
  before = os.path.getmtime(test_file)
  again = proposals.compute_splits(devkit, 'all', jobs=1)
  assert [s.get('cached', False) for s in again] == [False, True]
  assert again[1]['computed'] == 0 and os.path.getmtime(test_file) == before
  assert again[1]['mean_proposals'] == summaries[1]['mean_proposals']
  # Another split's file in its place is an error naming it, before any
  # split is computed.
  os.remove(again[0]['path'])
  os.replace(proposals.default_path(voc.open_detection(devkit, 'val')),
             test_file) if False else None
  trainval = voc.open_detection(devkit, 'trainval')
  proposals.compute(trainval, str(os.path.join(devkit, 'other.npz')), jobs=1)
  os.replace(os.path.join(devkit, 'other.npz'), test_file)
  with pytest.raises(InputError, match=r'fast_test\.npz'):
    proposals.compute_splits(devkit, 'all', jobs=1)
  assert not os.path.exists(again[0]['path'])


def _in_process(args, monkeypatch, capsys):
  """``(status, stdout, error lines)`` of the command with `args`, run in
  this process: its flags in a fresh FlagValues, parsed by the commands'
  parser, then its main."""
  flag_values = flags.FlagValues()
  command._define_flags(flag_values)  # pylint: disable=protected-access
  monkeypatch.setattr(flags, 'FLAGS', flag_values)
  capsys.readouterr()
  status = 0
  try:
    command.main(cli.parse_flags(['rotnet-proposals', *args]))
  except SystemExit as e:
    status = e.code
  out, err = capsys.readouterr()
  return status, out, [l for l in err.splitlines() if l.startswith('error:')]


@needs_opencv
def test_the_command_prints_the_file_and_refuses_bad_input_in_one_line(
    devkit, tmp_path, monkeypatch, capsys):
  out = tmp_path / 'val.npz'
  status, printed, errors = _in_process(
      [f'--dataset={devkit}', '--split=val', f'--output={out}', '--jobs=1'],
      monkeypatch, capsys)
  assert (status, errors) == (0, [])
  split = voc.open_detection(devkit, 'val')
  loaded = proposals.load(str(out), split)
  mean = sum(len(b) for b in loaded) / len(loaded)
  line, = printed.splitlines()
  assert line.startswith(f'wrote {out}: {len(split.ids)} images, '
                         f'{mean:.0f} proposals per image, '), line
  assert line.endswith(' s per image and process (10 computed now)'), line
  for args, message in [
      (('--split=bogus',), "split 'bogus' is not one of"),
      (('--mode=slow',), 'flag --mode=slow: value should be one of'),
      (('--jobs=-1',), 'flag --jobs=-1'),
      ((f'--output={tmp_path / "x.txt"}',), 'must end in .npz'),
      (('--split=all', f'--output={out}'), '--output names one file'),
      (('extra',), "unexpected arguments ['extra']")]:
    status, printed, errors = _in_process(
        [f'--dataset={devkit}', '--jobs=1', *args], monkeypatch, capsys)
    assert status == 2 and printed == '', args
    assert len(errors) == 1 and message in errors[0], (args, errors)
  # Already there: checked, kept, said.
  before = os.path.getmtime(out)
  status, printed, errors = _in_process(
      [f'--dataset={devkit}', '--split=val', f'--output={out}', '--jobs=1'],
      monkeypatch, capsys)
  assert (status, errors) == (0, []) and os.path.getmtime(out) == before
  assert printed.startswith(f'already there: {out}: {len(split.ids)} images')
  status, _, errors = _in_process([f'--dataset={tmp_path / "none"}'],
                                  monkeypatch, capsys)
  assert status == 2 and 'none' in errors[0], errors
  assert sorted(os.listdir(tmp_path)) == ['val.npz']


@needs_opencv
@pytest.mark.slow  # Two processes of the command (JAX's import: seconds).
def test_the_console_command_end_to_end(devkit, tmp_path):
  env = dict(os.environ, PYTHONPATH=helpers.REPO_ROOT)

  def command_line(*args):
    return subprocess.run(
        [sys.executable, '-m', 'rotnet_jax.commands.proposals',
         f'--dataset={devkit}', *args],
        capture_output=True, text=True, env=env, timeout=300)

  out = tmp_path / 'val.npz'
  result = command_line('--split=val', f'--output={out}', '--jobs=2')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'wrote {out}: 10 images, ')
  assert 'selective search: 10/10 images' in result.stderr
  split = voc.open_detection(devkit, 'val')
  assert len(proposals.load(str(out), split)) == 10
  result = command_line('--split=bogus', f'--output={tmp_path / "x.npz"}')
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and "'bogus'" in errors[0], result.stderr
  assert sorted(os.listdir(tmp_path)) == ['val.npz']


@needs_opencv
@pytest.mark.slow  # Starts two worker processes (seconds each here).
def test_processes_write_the_same_file_as_one(tmp_path):
  split = _split(tmp_path / 'images', count=6)
  one, two = str(tmp_path / 'one.npz'), str(tmp_path / 'two.npz')
  proposals.compute(split, one, jobs=1, chunk_size=4)
  summary = proposals.compute(split, two, jobs=2, chunk_size=4)
  assert summary['computed'] == 6
  with np.load(one) as a, np.load(two) as b:
    for key in proposals.KEYS:
      np.testing.assert_array_equal(a[key], b[key])
