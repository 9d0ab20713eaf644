"""Region proposals of a detection split: selective search, computed once
and cached beside the data, or read from R-CNN's MATLAB files.

Fast R-CNN classifies about 2,000 proposals per image; the original work
took them from selective search (Uijlings et al., IJCV 2013) in its
"fast" mode. Here :func:`compute` runs OpenCV's implementation
(``cv2.ximgproc.segmentation``, the ``opencv-contrib-python-headless``
package: ``pip install 'rotnet-jax[detection]'``) on every image of a
split and writes one ``.npz``; :func:`load` reads it back, checked against
the split. OpenCV's "fast" mode is not MATLAB's: it segments the image in
HSV and Lab at k = 150, 300, 450 with two similarity strategies, where
R-CNN's code used k = 50, 100 and four.

The ``.npz`` (:data:`KEYS`)::

  ids          str [N]              the split's image ids, in its order
  image_sizes  int32 [N, 2]         (height, width) of each image
  offsets      int64 [N + 1]        image i's boxes: boxes[offsets[i]:
                                    offsets[i + 1]]
  boxes        float32 [total, 4]   (x1, y1, x2, y2), 0-based, inclusive
                                    (``rotnet_jax.boxes``)
  method       str []               e.g. 'selective_search_fast'

Each image's boxes keep OpenCV's order, duplicates dropped. OpenCV ranks
the regions by ``rand() * level`` with the C library's generator (smaller
regions tend to come first, as the paper's ranking); the generator is
seeded with :data:`SEED` before every image, so an image gets the same
boxes in the same order whatever else ran before it in its process. The
C generator is one per process, shared by its threads: the images are
therefore spread over processes, not threads.

:func:`compute` is resumable: every :data:`CHUNK_SIZE` images it saves a
chunk file in ``<output>.partial/``; a rerun after an interruption (Ctrl-C,
a lost machine) reads the finished chunks instead of computing them again.
Every file (chunk, manifest, final ``.npz``) is written under a temporary
name and renamed once complete.

Also read: the MATLAB files of R-CNN / Fast R-CNN
(``selective_search_data/voc_2007_<split>.mat``): ``images``, a cell of
ids, and ``boxes``, a cell of ``[n, 4]`` (y1, x1, y2, x2) boxes in 1-based
pixels, converted to the convention above.
"""

import concurrent.futures
import ctypes
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import zipfile

from absl import logging
import numpy as np
from PIL import Image

from rotnet_jax import boxes as boxes_lib
from rotnet_jax.data import voc
from rotnet_jax.errors import first_line
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError

KEYS = ('ids', 'image_sizes', 'offsets', 'boxes', 'method')
MODES = ('fast', 'quality')
# Images per chunk file of an unfinished computation: at about a second
# per image, a chunk is a minute of one core's work, the most a restart
# loses.
CHUNK_SIZE = 50
# The C library's rand() seed set before each image (module docstring).
SEED = 0
_METHOD_PREFIX = 'selective_search_'
_MANIFEST = 'manifest.json'
_INSTALL = "pip install 'rotnet-jax[detection]'"
# What compute_splits(split='all') computes: Fast R-CNN's training and
# test splits.
ALL_SPLITS = ('trainval', 'test')


def method_name(mode: str) -> str:
  """The ``method`` a file of selective search in `mode` records."""
  return _METHOD_PREFIX + mode


def default_path(split, mode: str = 'fast') -> str:
  """Where the proposals of `split` are cached: beside the data.

  Args:
    split: a ``voc.DetectionSplit`` (its ``year_dir`` and ``split``).
    mode: the selective search mode (:data:`MODES`).

  Returns:
    ``<year_dir>/proposals/selective_search_<mode>_<split>.npz``.
  """
  return os.path.join(split.year_dir, 'proposals',
                      f'{method_name(mode)}_{split.split}.npz')


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise InputError(f'selective search mode {mode!r} is not one of '
                     f'{", ".join(MODES)}')


def _import_cv2():
  """OpenCV with its contrib modules, or an InputError saying how to get
  it (imported only here: the rest of the package never needs it)."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError(f'selective search needs OpenCV (cv2: {first_line(e)})'
                     f': {_INSTALL}') from e
  if not hasattr(cv2, 'ximgproc'):
    raise InputError(
        'selective search needs OpenCV\'s contrib modules (cv2.ximgproc), '
        f'which this cv2 ({cv2.__version__}) lacks: {_INSTALL} (and '
        'uninstall opencv-python / opencv-python-headless, which hide it)')
  return cv2


def _seed_c_random() -> None:
  """Seeds the C library's rand(), which OpenCV's ranking draws from."""
  try:
    libc = ctypes.CDLL(None)
    libc.srand(ctypes.c_uint(SEED))
  except (OSError, AttributeError):  # A C library without srand.
    logging.log_first_n(logging.WARNING, 'cannot seed the C library\'s '
                        'rand(): proposals come in a random order', 1)


def selective_search(image: np.ndarray, mode: str = 'fast') -> np.ndarray:
  """Selective search's boxes on one image, in the package's convention.

  Args:
    image: ``uint8 [H, W, 3]``, RGB.
    mode: ``'fast'`` or ``'quality'`` (OpenCV's
      ``switchToSelectiveSearchFast`` / ``...Quality`` with their default
      settings).

  Returns:
    ``float32 [n, 4]`` boxes ``(x1, y1, x2, y2)``, 0-based, inclusive, in
    OpenCV's order (first occurrence kept of any duplicate). The same
    image gives the same array (module docstring).

  Raises:
    InputError: OpenCV's contrib modules are missing, or an unknown mode.
  """
  _check_mode(mode)
  cv2 = _import_cv2()
  # OpenCV wants BGR.
  bgr = np.ascontiguousarray(np.asarray(image, np.uint8)[:, :, ::-1])
  search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
  search.setBaseImage(bgr)
  if mode == 'fast':
    search.switchToSelectiveSearchFast()
  else:
    search.switchToSelectiveSearchQuality()
  _seed_c_random()
  rects = np.asarray(search.process(), np.int64).reshape(-1, 4)
  _, first = np.unique(rects, axis=0, return_index=True)
  rects = rects[np.sort(first)]
  x, y, w, h = rects.T
  # OpenCV's (x, y, w, h) covers columns x .. x + w - 1.
  return np.stack([x, y, x + w - 1, y + h - 1], axis=1).astype(np.float32)


def _propose_file(path: str, mode: str):
  """``(boxes, (height, width))`` of the image file `path`."""
  try:
    with Image.open(path) as opened:
      image = np.asarray(opened.convert('RGB'))
  except (OSError, ValueError) as e:
    raise InputError(f'image file {path} cannot be decoded: '
                     f'{first_line(e)}') from e
  return selective_search(image, mode), image.shape[:2]


def _init_worker() -> None:
  # Ctrl-C reaches the whole process group: the parent alone handles it
  # (it cancels what is queued), without a traceback from every worker.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # One OpenCV thread per process: the processes already fill the cores.
  _import_cv2().setNumThreads(1)


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


def _write_atomically(path: str, write) -> None:
  """``write(file object)`` into a temporary file beside `path`, then
  renamed to `path`: an interruption leaves no partial file."""
  folder = os.path.dirname(path)
  handle, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.',
                                 suffix='.tmp', dir=folder)
  try:
    with os.fdopen(handle, 'wb') as f:
      write(f)
    # mkstemp makes the file private (0600); give it the permissions any
    # new file would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _save_npz(path: str, **arrays) -> None:
  # Compressed: the box coordinates are whole numbers, a third of the size
  # (VOC07 trainval + test: about 75 MB instead of 210), for 3 ms an image.
  _write_atomically(path, lambda f: np.savez_compressed(f, **arrays))


def _pack(ids, sizes, per_image, method: str) -> dict:
  """The arrays of the file format (module docstring)."""
  counts = [len(b) for b in per_image]
  offsets = np.zeros(len(per_image) + 1, np.int64)
  offsets[1:] = np.cumsum(counts)
  stacked = (np.concatenate(per_image).astype(np.float32) if per_image
             else np.zeros((0, 4), np.float32))
  return dict(ids=np.asarray(ids, dtype=str),
              image_sizes=np.asarray(sizes, np.int32).reshape(-1, 2),
              offsets=offsets, boxes=stacked.reshape(-1, 4),
              method=np.asarray(method))


def _unpack(arrays) -> list[np.ndarray]:
  offsets = arrays['offsets']
  return list(np.split(arrays['boxes'], offsets[1:-1]))


def check_output(output: str, overwrite: bool) -> str:
  """The absolute `output` path, if a proposals file may be written there.

  Writes nothing. Raises InputError: empty, not ``.npz``, a folder, an
  existing file without `overwrite`, or a folder that cannot be written.
  """
  if not output or not output.strip():
    raise InputError('the proposals file to write is empty: name a .npz '
                     'file')
  full = os.path.abspath(os.path.expanduser(output))
  if not full.endswith('.npz'):
    raise InputError(f'proposals file {output!r} must end in .npz')
  if os.path.isdir(full):
    raise InputError(f'proposals file {output!r} is a folder: name a file '
                     'in it')
  if os.path.exists(full) and not overwrite:
    raise InputError(f'proposals file {full} already exists: pass '
                     '--overwrite to compute it again, or choose another '
                     'name')
  existing = os.path.dirname(full)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(f'proposals file {full} cannot be written: {existing} '
                     'is a file')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f'proposals file {full} cannot be written: {existing} '
                     'is not writable (pass --output=PATH elsewhere)')
  return full


def _manifest(ids, method: str, chunk_size: int) -> dict:
  digest = hashlib.sha256('\n'.join(ids).encode()).hexdigest()
  return dict(method=method, chunk_size=chunk_size, images=len(ids),
              ids_sha256=digest)


def _open_partial(partial: str, manifest: dict) -> None:
  """Creates `partial`, or checks that it is the same computation's."""
  path = os.path.join(partial, _MANIFEST)
  if os.path.exists(path):
    try:
      with open(path) as f:
        found = json.load(f)
    except (OSError, ValueError) as e:
      raise InputError(f'unfinished proposals {partial}: {_MANIFEST} cannot '
                       f'be read ({first_line(e)}): delete the folder to '
                       'start again') from e
    if found != manifest:
      raise InputError(
          f'unfinished proposals {partial} are of other images or settings '
          f'({found.get("method")}, {found.get("images")} images, chunks of '
          f'{found.get("chunk_size")}; now {manifest["method"]}, '
          f'{manifest["images"]} images, chunks of {manifest["chunk_size"]})'
          ': delete the folder to start again, or write elsewhere')
    return
  os.makedirs(partial, exist_ok=True)
  text = json.dumps(manifest, indent=2, sort_keys=True).encode()
  _write_atomically(path, lambda f: f.write(text))


def _chunk_path(partial: str, index: int) -> str:
  return os.path.join(partial, f'chunk_{index:05d}.npz')


def _read_chunk(path: str, ids) -> list[np.ndarray] | None:
  """A finished chunk's boxes, or None if it is not there or not whole."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as arrays:
      if list(arrays['ids']) != list(ids):
        raise ValueError('other images')
      return _unpack(arrays)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    logging.warning('computing chunk %s again: %s', path, first_line(e))
    return None


def compute(split, output: str, *, mode: str = 'fast', jobs: int = 1,
            chunk_size: int = CHUNK_SIZE, overwrite: bool = False,
            log_every_seconds: float = 60.0) -> dict:
  """Runs selective search on every image of `split`; writes `output`.

  Resumes an unfinished run of the same output (its chunks in
  ``<output>.partial/``, module docstring), and logs progress (images
  done, images/s, ETA) at every chunk saved and at most every
  `log_every_seconds` in between.

  Args:
    split: a ``voc.DetectionSplit``, or any object with its ``ids``,
      ``paths`` and ``sizes`` (``int32 [N, 2]``, (height, width)).
    output: the ``.npz`` to write (e.g. :func:`default_path`).
    mode: ``'fast'`` or ``'quality'``.
    jobs: processes computing images at once (1: in this process).
    chunk_size: images per chunk file.
    overwrite: replace an existing `output`.
    log_every_seconds: the longest time between two progress lines.

  Returns:
    ``{'path', 'images', 'proposals' (total), 'mean_proposals',
    'computed' (images computed by this call, the others resumed),
    'seconds', 'seconds_per_image' (of the images computed; one job's
    share times jobs is the time of one image)}``.

  Raises:
    InputError: an unknown mode, bad `jobs` or `chunk_size`, an output
      that exists (without `overwrite`) or cannot be written, an
      unfinished run of other images or settings there, OpenCV's contrib
      modules missing (each before anything is written); an image that
      cannot be decoded or whose size differs from ``split.sizes``.
  """
  _check_mode(mode)
  if jobs < 1:
    raise InputError(f'jobs={jobs}: must be at least 1')
  if chunk_size < 1:
    raise InputError(f'chunk_size={chunk_size}: must be at least 1')
  full = check_output(output, overwrite)
  ids = [str(i) for i in split.ids]
  paths = list(split.paths)
  sizes = np.asarray(split.sizes, np.int32).reshape(-1, 2)
  if not ids or len(paths) != len(ids) or len(sizes) != len(ids):
    raise InputError(f'proposals for {full}: the split has {len(ids)} ids, '
                     f'{len(paths)} paths and {len(sizes)} sizes: expected '
                     'as many of each, at least one')
  _import_cv2()
  method = method_name(mode)
  partial = full + '.partial'
  _open_partial(partial, _manifest(ids, method, chunk_size))

  starts = range(0, len(ids), chunk_size)
  per_image = [None] * len(ids)
  todo = []
  for chunk, start in enumerate(starts):
    stop = min(start + chunk_size, len(ids))
    found = _read_chunk(_chunk_path(partial, chunk), ids[start:stop])
    if found is None:
      todo.append(chunk)
    else:
      per_image[start:stop] = found
  if len(todo) < len(starts):
    logging.info('resuming %s: %d of %d chunks already computed', partial,
                 len(starts) - len(todo), len(starts))
  indices = [i for c in todo
             for i in range(starts[c], min(starts[c] + chunk_size, len(ids)))]
  start_time = time.perf_counter()
  _run(indices, paths, sizes, ids, mode, jobs, per_image, partial,
       chunk_size, start_time, log_every_seconds)
  seconds = time.perf_counter() - start_time

  arrays = _pack(ids, sizes, per_image, method)
  _save_npz(full, **arrays)
  shutil.rmtree(partial, ignore_errors=True)
  total = len(arrays['boxes'])
  return dict(path=full, images=len(ids), proposals=total,
              mean_proposals=total / len(ids), computed=len(indices),
              seconds=seconds,
              seconds_per_image=seconds / max(len(indices), 1)
              * min(jobs, max(len(indices), 1)))


def _splits(split: str, output: str | None) -> tuple[str, ...]:
  if split != 'all':
    return (split,)
  if output is not None:
    raise InputError('--output names one file: with --split=all each split '
                     'is written to its default path; drop --output or '
                     'pass one split')
  return ALL_SPLITS


def _cores() -> int:
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def compute_splits(dataset: str, split: str, *, output: str | None = None,
                   mode: str = 'fast', jobs: int = 0,
                   overwrite: bool = False) -> list[dict]:
  """Computes the proposals of a VOC2007 detection split, or of
  :data:`ALL_SPLITS` (`split` ``'all'``), each to :func:`default_path` or
  `output`.

  Every split is opened and every output checked before any image is
  computed: a bad one writes nothing.

  Args:
    dataset: a VOCdevkit or VOC2007 folder (``voc.open_detection``).
    split: ``trainval``, ``test``, ``train``, ``val`` or ``all``.
    output: the ``.npz`` to write (one split only).
    mode: ``'fast'`` or ``'quality'``.
    jobs: processes computing images at once (0: one per CPU core).
    overwrite: replace existing files. Without it a split whose file
      exists is checked (``load``) and left as it is: a rerun, or a
      resumed reproduction, never computes it again.

  Returns:
    One summary per split, :func:`compute`'s (``cached`` True where the
    file was there already).

  Raises:
    InputError, MissingInputError: a bad folder, split, output or mode,
      as :func:`compute` and ``voc.open_detection``.
  """
  _check_mode(mode)
  opened = [voc.open_detection(dataset, s) for s in _splits(split, output)]
  outputs = [output or default_path(s, mode) for s in opened]
  cached = {}
  for split_opened, path in zip(opened, outputs):
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(full) and not overwrite:
      # Already computed: checked against the split (another split's or
      # dataset's file is an error), never computed again.
      cached[path] = _cached_summary(full, split_opened)
    else:
      check_output(path, overwrite)
  jobs = jobs or _cores()
  return [cached.get(path) or compute(s, path, mode=mode, jobs=jobs,
                                      overwrite=overwrite)
          for s, path in zip(opened, outputs)]


def _cached_summary(path: str, split) -> dict:
  """:func:`compute`'s summary of a file already there (nothing
  computed)."""
  regions = load(path, split)
  count = sum(len(r) for r in regions)
  return {'path': path, 'images': len(regions), 'proposals': count,
          'mean_proposals': count / max(len(regions), 1), 'computed': 0,
          'seconds': 0.0, 'seconds_per_image': 0.0, 'cached': True}


def _run(indices, paths, sizes, ids, mode, jobs, per_image, partial,
         chunk_size, start_time, log_every_seconds) -> None:
  """Computes the images `indices` (whole chunks, in order) into
  `per_image`, saving each chunk as soon as it is complete."""
  if not indices:
    return
  jobs = min(jobs, len(indices))
  pool = None
  if jobs > 1:
    # Spawned, not forked: the parent may hold JAX's threads.
    pool = concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context('spawn'),
        initializer=_init_worker)
    results = pool.map(_propose_file, [paths[i] for i in indices],
                       [mode] * len(indices))
  else:
    results = (_propose_file(paths[i], mode) for i in indices)
  last_log = start_time
  try:
    for done, (index, (found, shape)) in enumerate(zip(indices, results), 1):
      if tuple(shape) != tuple(int(s) for s in sizes[index]):
        raise InputError(
            f'image file {paths[index]} is {shape[1]}x{shape[0]} (width x '
            f'height), its annotation says {sizes[index][1]}x'
            f'{sizes[index][0]}')
      per_image[index] = found
      now = time.perf_counter()
      chunk_end = (index + 1) % chunk_size == 0 or index == len(ids) - 1
      if chunk_end:
        chunk = index // chunk_size
        start = chunk * chunk_size
        _save_npz(_chunk_path(partial, chunk),
                  **_pack(ids[start:index + 1], sizes[start:index + 1],
                          per_image[start:index + 1], 'chunk'))
      if chunk_end or now - last_log >= log_every_seconds:
        last_log = now
        rate = done / max(now - start_time, 1e-9)
        logging.info('selective search: %d/%d images | %.2f img/s | ETA %s',
                     done, len(indices), rate,
                     _format_duration((len(indices) - done) / rate))
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)


def _entry(arrays, key: str, path: str) -> np.ndarray:
  if key not in arrays:
    raise InputError(f'proposals file {path} has no {key!r}: a proposals '
                     f'.npz holds {", ".join(KEYS)} (rotnet-proposals '
                     'writes it)')
  return arrays[key]


def _read_npz(path: str):
  """``(ids, image_sizes or None, offsets, boxes)`` of an ``.npz``."""
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise ValueError('a single array, not an .npz archive')
    with loaded as arrays:
      found = {k: _entry(arrays, k, path) for k in KEYS}
  except InputError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise InputError(f'proposals file {path} is not a readable .npz file '
                     f'({first_line(e)}): compute it again with '
                     'rotnet-proposals') from e
  ids, image_sizes = found['ids'], found['image_sizes']
  offsets, stacked = found['offsets'], found['boxes']
  if ids.ndim != 1 or ids.dtype.kind != 'U':
    raise InputError(f'proposals file {path}: ids of shape {ids.shape} and '
                     f'dtype {ids.dtype}: expected strings [N]')
  if image_sizes.shape != (len(ids), 2) or image_sizes.dtype.kind not in 'iu':
    raise InputError(f'proposals file {path}: image_sizes of shape '
                     f'{image_sizes.shape} and dtype {image_sizes.dtype}: '
                     f'expected integers [{len(ids)}, 2]')
  if (offsets.shape != (len(ids) + 1,) or offsets.dtype.kind not in 'iu'
      or stacked.ndim != 2 or stacked.shape[1] != 4
      or stacked.dtype.kind != 'f' or offsets[0] != 0
      or offsets[-1] != len(stacked) or np.any(np.diff(offsets) < 0)):
    raise InputError(
        f'proposals file {path}: offsets {offsets.shape} and boxes '
        f'{stacked.shape} ({stacked.dtype}) do not fit: expected offsets '
        f'[{len(ids) + 1}] rising from 0 to the number of boxes and float '
        'boxes [total, 4]')
  return ids, image_sizes, offsets, stacked


def _cell_text(cell) -> str:
  """An id of a MATLAB cell array as loadmat gives it."""
  value = np.asarray(cell).ravel()
  return str(value[0]) if value.size == 1 else ''.join(map(str, value))


def _read_mat(path: str):
  """``(ids or None, None, offsets, boxes)`` of R-CNN's MATLAB file."""
  try:
    import scipy.io  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError(f'proposals file {path}: reading a .mat file needs '
                     'scipy (pip install scipy)') from e
  try:
    mat = scipy.io.loadmat(path)
  except (OSError, ValueError, NotImplementedError, TypeError) as e:
    raise InputError(f'proposals file {path} is not a readable MATLAB file '
                     f'({first_line(e)}): expected R-CNN\'s '
                     'selective_search_data/voc_2007_<split>.mat') from e
  if 'boxes' not in mat:
    raise InputError(f'proposals file {path} has no \'boxes\': R-CNN\'s '
                     '.mat holds a cell of [n, 4] boxes (and images, a cell '
                     'of ids)')
  cells = np.asarray(mat['boxes']).ravel()
  ids = None
  if 'images' in mat:
    ids = np.asarray([_cell_text(c) for c in np.asarray(
        mat['images']).ravel()], dtype=str).reshape(-1)
  per_image = []
  for number, cell in enumerate(cells):
    raw = np.asarray(cell)
    if raw.size == 0:
      raw = raw.reshape(0, 4)
    if raw.ndim != 2 or raw.shape[1] != 4 or raw.dtype.kind not in 'iuf':
      raise InputError(f'proposals file {path}: boxes of image {number} '
                       f'have shape {raw.shape} ({raw.dtype}): expected '
                       'numbers [n, 4] (y1, x1, y2, x2)')
    # (y1, x1, y2, x2) 1-based -> (x1, y1, x2, y2) 0-based.
    per_image.append(raw[:, (1, 0, 3, 2)].astype(np.float32) - 1)
  offsets = np.zeros(len(per_image) + 1, np.int64)
  offsets[1:] = np.cumsum([len(b) for b in per_image])
  stacked = (np.concatenate(per_image) if per_image
             else np.zeros((0, 4), np.float32))
  return ids, None, offsets, stacked


def load(path: str, split, *, max_proposals: int = 0) -> list[np.ndarray]:
  """The proposals of every image of `split`, checked against it.

  Args:
    path: a ``.npz`` of :func:`compute` or R-CNN's ``.mat``.
    split: a ``voc.DetectionSplit``, or any object with its ``ids`` and
      ``sizes`` (``[N, 2]``, (height, width)).
    max_proposals: when positive, only the first `max_proposals` boxes of
      each image are kept.

  Returns:
    Per image of `split`, in its order, ``float32 [n, 4]`` boxes
    ``(x1, y1, x2, y2)``, 0-based, inclusive.

  Raises:
    MissingInputError: no file at `path`.
    InputError: one line naming the file and the entry: unreadable or
      missing keys; proposals for another number of images, other ids
      (the first position that differs and both ids) or other image
      sizes; an image without proposals; a box that is not finite, empty
      or outside its image (image id and box index).
  """
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(full):
    raise MissingInputError(f'proposals file {full} does not exist: compute '
                            'it with rotnet-proposals --dataset=... '
                            '--split=...')
  if max_proposals < 0:
    raise InputError(f'max_proposals={max_proposals}: must be 0 (all) or '
                     'positive')
  reader = _read_mat if full.endswith('.mat') else _read_npz
  ids, image_sizes, offsets, stacked = reader(full)
  expected = [str(i) for i in split.ids]
  sizes = np.asarray(split.sizes, np.int64).reshape(-1, 2)
  count = len(offsets) - 1
  name = getattr(split, 'split', None)
  if count != len(expected):
    raise InputError(
        f'proposals file {full} holds proposals for {count} images, the '
        f'split{f" {name!r}" if name else ""} has {len(expected)}: a file of '
        'another split or dataset?')
  if ids is not None:
    if len(ids) != count:
      raise InputError(f'proposals file {full} names {len(ids)} images and '
                       f'holds boxes for {count}')
    differ = np.flatnonzero(np.asarray(ids) != np.asarray(expected, str))
    if len(differ):
      at = int(differ[0])
      raise InputError(
          f'proposals file {full}: image {at} is {str(ids[at])!r}, the '
          f'split{f" {name!r}" if name else ""} has {expected[at]!r} there: a '
          'file of another split or dataset?')
  if image_sizes is not None:
    differ = np.flatnonzero(np.any(image_sizes != sizes, axis=1))
    if len(differ):
      at = int(differ[0])
      raise InputError(
          f'proposals file {full}: image {expected[at]} (index {at}) is '
          f'{image_sizes[at][1]}x{image_sizes[at][0]} there, '
          f'{sizes[at][1]}x{sizes[at][0]} (width x height) in the dataset: '
          'proposals of other images')
  counts = np.diff(offsets)
  if np.any(counts == 0):
    at = int(np.argmax(counts == 0))
    raise InputError(f'proposals file {full}: image {expected[at]} (index '
                     f'{at}) has no proposals')
  _check_all_boxes(full, stacked, offsets, sizes, expected)
  per_image = np.split(stacked.astype(np.float32, copy=False), offsets[1:-1])
  if max_proposals:
    per_image = [b[:max_proposals] for b in per_image]
  return per_image


def _check_all_boxes(path, stacked, offsets, sizes, ids) -> None:
  """Every box finite, not empty and inside its image; the first bad
  one's image is checked again by ``boxes.check_boxes`` for its message."""
  # Each box's (width - 1, height - 1), in the boxes' dtype: no float64
  # copy of VOC07's ten million boxes. NaN fails every comparison, and
  # an infinite corner one of them.
  limits = np.repeat((sizes[:, ::-1] - 1).astype(stacked.dtype),
                     np.diff(offsets), axis=0)
  corner, far = stacked[:, :2], stacked[:, 2:]
  good = ((corner >= 0) & (far >= corner) & (far <= limits)).all(axis=1)
  if good.all():
    return
  at = int(np.searchsorted(offsets, np.argmax(~good), side='right')) - 1
  boxes_lib.check_boxes(stacked[offsets[at]:offsets[at + 1]],
                        int(sizes[at, 0]), int(sizes[at, 1]),
                        f'proposals file {path}: image {ids[at]} (index '
                        f'{at})')
  # Not reached while both checks agree.
  raise InputError(f'proposals file {path}: image {ids[at]} (index {at}) '
                   'has a box that is not finite, empty or inside the image')
