"""The files of a run's workdir: their names, and how they are read and written.

    WORKDIR/
      config.json     the resolved config, plus "network" (what rebuilds it)
      metrics.jsonl   one JSON object per logged event (metrics.MetricWriter)
      results.json    per head: final and best test accuracy (write_results)
      checkpoints/    Orbax checkpoints (checkpoint.Checkpointer)
      tensorboard/    event files, when tensorboardX is installed
      damaged_checkpoints/  checkpoints that could not be read on resume
      run.lock        while a run trains here: its host, process id, start time

Training, ``rotnet_jax.reproduce`` and ``rotnet_jax.report`` all find the
files through this module. JSON files are replaced atomically, so a crash
never leaves half a file, and only process 0 writes.

Every path may be a local one or a Cloud Storage URL (``gs://bucket/...``;
also the other schemes ``etils.epath`` knows: ``s3://``, ``az://``,
``hf://``). The functions below are the project's one path library: local
paths keep the plain ``os`` calls (atomic renames, ``O_EXCL``, permission
checks), remote ones go through ``etils.epath``, which Orbax and TFDS use
too. Paths stay strings (``path``, ``join``) so that messages show them as
typed.
"""

import contextlib
import datetime
import json
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import jax
from absl import logging
from etils import epath

from rotnet_jax.errors import InputError, first_line

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINTS_DIR = 'checkpoints'
TENSORBOARD_DIR = 'tensorboard'
# Checkpoints that could not be read on resume are moved here.
DAMAGED_CHECKPOINTS_DIR = 'damaged_checkpoints'
# Held by the run training in the workdir (one run per workdir).
LOCK_FILE = 'run.lock'

# The URL schemes etils.epath sends to a cloud file system.
REMOTE_PREFIXES = ('gs://', 's3://', 'az://', 'hf://')


# --- Paths, local or remote -------------------------------------------------


def is_remote(file_path: Any) -> bool:
  """Whether `file_path` is a URL (``gs://...``) rather than a local path."""
  return os.fspath(file_path).startswith(REMOTE_PREFIXES)


def absolute(file_path: Any) -> str:
  """`file_path` with ``~`` expanded and made absolute; a URL as it is
  (without a trailing ``/``). ``os.path.abspath`` would turn
  ``gs://b/x`` into ``/cwd/gs:/b/x``."""
  file_path = os.fspath(file_path)
  if is_remote(file_path):
    scheme, rest = file_path.split('://', 1)
    rest = posixpath.normpath(rest) if rest.strip('/') else rest
    return f'{scheme}://{rest.rstrip("/")}'
  return os.path.abspath(os.path.expanduser(file_path))


_absolute = absolute  # The name other modules of the project used.


def join(folder: Any, *names: str) -> str:
  """``folder/name/...``: ``/``-joined for a URL, ``os.path.join`` else."""
  folder = absolute(folder)
  if is_remote(folder):
    return posixpath.join(folder, *names)
  return os.path.join(folder, *names)


def path(workdir: Any, name: str) -> str:
  """``WORKDIR/name``, absolute (a URL stays a URL)."""
  return join(workdir, name)


def parent(file_path: Any) -> str:
  """The folder that holds `file_path`."""
  full = absolute(file_path)
  if is_remote(full):
    scheme, rest = full.split('://', 1)
    head = posixpath.dirname(rest)
    return f'{scheme}://{head}' if head else f'{scheme}://{rest}'
  return os.path.dirname(full)


def basename(file_path: Any) -> str:
  """The last part of `file_path`."""
  return posixpath.basename(absolute(file_path))


def relative(file_path: Any, start: Any) -> str:
  """`file_path` relative to the folder `start` (both local or both URLs)."""
  full, root = absolute(file_path), absolute(start)
  if is_remote(full):
    return posixpath.relpath(full.split('://', 1)[1], root.split('://', 1)[1])
  return os.path.relpath(full, root)


def epath_of(file_path: Any) -> epath.Path:
  """`file_path` as an ``etils.epath.Path`` (for libraries that take one)."""
  return epath.Path(absolute(file_path))


def exists(file_path: Any) -> bool:
  """Whether something is at `file_path` (a broken local link counts)."""
  if is_remote(file_path):
    return epath_of(file_path).exists()
  return os.path.lexists(absolute(file_path))


def isdir(file_path: Any) -> bool:
  """Whether `file_path` is a folder (on Cloud Storage: a prefix with
  objects under it)."""
  if is_remote(file_path):
    return epath_of(file_path).is_dir()
  return os.path.isdir(absolute(file_path))


def isfile(file_path: Any) -> bool:
  """Whether `file_path` is a file (an object, on Cloud Storage)."""
  if is_remote(file_path):
    found = epath_of(file_path)
    return found.exists() and not found.is_dir()
  return os.path.isfile(absolute(file_path))


def makedirs(folder: Any) -> None:
  """Creates `folder` and its parents if missing."""
  if is_remote(folder):
    epath_of(folder).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(absolute(folder), exist_ok=True)


def open_file(file_path: Any, mode: str = 'r') -> IO:
  """`file_path` opened in `mode` (``r``, ``w``, ``a``, with ``b``).

  On Cloud Storage an object is uploaded as a whole (on ``flush`` or
  ``close``): readers see the previous object or the new one. Appending
  to a URL is refused: object stores have none (gcsfs would silently
  replace the object); rewrite the whole file instead.
  """
  if is_remote(file_path):
    if 'a' in mode:
      raise ValueError(f'cannot append to {file_path}: an object store has '
                       'no append; rewrite the file (write_text)')
    return epath_of(file_path).open(mode)
  return open(absolute(file_path), mode)  # pylint: disable=unspecified-encoding


def read_bytes(file_path: Any) -> bytes:
  """The content of `file_path`."""
  with open_file(file_path, 'rb') as f:
    return f.read()


def read_text(file_path: Any) -> str:
  """The text of `file_path` (UTF-8)."""
  return read_bytes(file_path).decode('utf-8')


def remove(file_path: Any, *, missing_ok: bool = True) -> None:
  """Deletes the file `file_path`."""
  try:
    if is_remote(file_path):
      epath_of(file_path).unlink()
    else:
      os.remove(absolute(file_path))
  except FileNotFoundError:
    if not missing_ok:
      raise


def listdir(folder: Any) -> list[str]:
  """The names in `folder`, sorted."""
  if is_remote(folder):
    return sorted(p.name for p in epath_of(folder).iterdir())
  return sorted(os.listdir(absolute(folder)))


def walk(root: Any) -> Iterator[tuple[str, list[str], list[str]]]:
  """``os.walk(root)`` for a local folder or a URL: ``(folder, folder
  names, file names)``, top down, folders as strings."""
  if not is_remote(root):
    yield from os.walk(absolute(root))
    return
  for folder, dirs, files in epath_of(root).walk():
    yield absolute(os.fspath(folder)), dirs, files


def size(file_path: Any) -> int:
  """The size of the file `file_path` in bytes."""
  if is_remote(file_path):
    return int(epath_of(file_path).stat().length)
  return os.path.getsize(absolute(file_path))


@contextlib.contextmanager
def local_copy(file_path: Any) -> Iterator[str]:
  """A local path holding the content of `file_path`, while the body runs.

  For readers that take only a local file (safetensors, torch.load): a
  local path is given as it is; a URL is downloaded to a temporary file,
  deleted afterwards.
  """
  if not is_remote(file_path):
    yield absolute(file_path)
    return
  handle, tmp = tempfile.mkstemp(prefix='rotnet-',
                                 suffix=f'-{basename(file_path)}')
  try:
    with os.fdopen(handle, 'wb') as target, open_file(file_path,
                                                      'rb') as source:
      shutil.copyfileobj(source, target, 1 << 22)
    yield tmp
  finally:
    os.remove(tmp)


def free_bytes(folder: Any) -> int | None:
  """Free space on the disk that holds (or will hold) `folder`; None for a
  URL: an object store has no disk to run out of."""
  if is_remote(folder):
    return None
  return shutil.disk_usage(nearest_existing(folder)).free


def nearest_existing(folder: str) -> str:
  """`folder` (absolute) if it exists, else its nearest existing ancestor.

  A URL is returned as it is: Cloud Storage has no folders to create.
  """
  existing = absolute(folder)
  if is_remote(existing):
    return existing
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  return existing


# --- Checks before a run writes ---------------------------------------------


# What each entry of a workdir must be, if it exists.
_FILES = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, LOCK_FILE)
_FOLDERS = (CHECKPOINTS_DIR, TENSORBOARD_DIR, DAMAGED_CHECKPOINTS_DIR)

# The name of the object check_writable_folder writes and deletes in a
# remote folder.
_PROBE_PREFIX = '.rotnet-write-probe'


def check_writable_folder(folder: str, what: str) -> None:
  """Raises InputError unless `folder` is, or can be made, a writable folder.

  A local folder is checked without writing: the nearest existing
  ancestor must be a writable folder. A URL (``gs://...``) has no
  permission bits to read: a small probe object is written in it and
  deleted (Cloud Storage has no folders, so nothing is left behind); a
  missing bucket, missing credentials or a read-only bucket fail here,
  before any training.

  Args:
    folder: the path.
    what: how to name it in the message (e.g. ``--workdir``).
  """
  if not folder or not folder.strip():
    raise InputError(f'{what} is empty: pass a folder')
  if is_remote(folder):
    _check_remote_writable(folder, what)
    return
  existing = nearest_existing(folder)
  if not os.path.isdir(existing):
    raise InputError(
        f'{what}={folder!r} cannot be a folder: {existing} is a file' if
        existing != absolute(folder) else f'{what}={folder!r} is a file, '
        'not a folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f'{what}={folder!r} cannot be written: {existing} is '
                     'not writable')


def _check_remote_writable(folder: str, what: str) -> None:
  full = absolute(folder)
  if full.split('://', 1)[1] == '':
    raise InputError(f'{what}={folder!r} names no bucket: pass '
                     'gs://BUCKET/FOLDER')
  try:
    if isfile(full):
      raise InputError(f'{what}={folder!r} is a file, not a folder')
    probe = join(full, f'{_PROBE_PREFIX}.{socket.gethostname()}.'
                 f'{os.getpid()}.{uuid.uuid4().hex[:8]}')
    with open_file(probe, 'w') as f:
      f.write('rotnet-jax checks that this folder can be written\n')
    remove(probe)
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Credentials, a missing bucket, a denied permission: each library
    # (TensorFlow's GCS file system, gcsfs) has its own error classes.
    raise InputError(f'{what}={folder!r} cannot be written ({type(e).__name__}'
                     f': {first_line(e)}): check the bucket name and that '
                     'this machine\'s credentials may write it') from e


def check_workdir(workdir: str) -> None:
  """Raises InputError unless `workdir` can hold a run.

  It must be a folder (or creatable as one) that can be written, and what
  it already holds must be what a run writes there: ``config.json``,
  ``metrics.jsonl`` and ``results.json`` files, ``checkpoints/`` and
  ``tensorboard/`` folders. Reads only, except on Cloud Storage, where a
  probe object is written and deleted (see ``check_writable_folder``).
  """
  check_writable_folder(workdir, '--workdir')
  for name in _FILES:
    entry = path(workdir, name)
    if exists(entry) and not isfile(entry):
      raise InputError(f'{entry} should be a file (the run writes its '
                       f'{name} there) but is not: move it away')
  for name in _FOLDERS:
    entry = path(workdir, name)
    if exists(entry) and not isdir(entry):
      raise InputError(f'{entry} should be a folder (the run keeps its '
                       f'{name} there) but is a file: move it away')


def check_output_file(out: str, *, what: str, suffix: str,
                      overwrite: bool) -> str:
  """The absolute path `out`, if a command may write its output file there.

  Args:
    out: the path given (local or ``gs://...``).
    what: how to name it in messages (e.g. ``'--out'``).
    suffix: the ending the file must have (readers recognise it by it).
    overwrite: whether an existing file may be replaced.

  Raises:
    InputError: empty, another suffix, a folder, an existing file without
      `overwrite`, or a folder that cannot be written.
  """
  if not out or not out.strip():
    raise InputError(f'{what} is empty: name the {suffix} file to write')
  full = absolute(out)
  if not full.endswith(suffix):
    raise InputError(f'{what}={out!r} must end in {suffix} (that is how '
                     'the readers recognise it)')
  if isdir(full):
    raise InputError(f'{what}={out!r} is a folder: name a file in it')
  if exists(full) and not overwrite:
    raise InputError(f'{what}={out!r} already exists: pass --overwrite to '
                     'replace it, or choose another name')
  check_writable_folder(parent(full), f'the folder of {what}')
  return full


# --- Writing and reading ----------------------------------------------------


def write_file_atomically(file_path: str, write: Callable[[str], Any]) -> None:
  """Calls ``write(temporary_path)``, then puts the file at `file_path`.

  `write` gets a local path (for writers such as ``np.savez`` or
  safetensors that take one). Locally the temporary file lives beside
  `file_path` (same file system, so the rename is atomic); for a URL it is
  uploaded as one object, which Cloud Storage makes visible only once
  complete. Either way an interrupted write leaves no partial file, and an
  existing one is replaced only once the new one is complete.
  """
  remote = is_remote(file_path)
  folder = None if remote else parent(file_path)
  if folder is not None:
    os.makedirs(folder, exist_ok=True)
  handle, tmp = tempfile.mkstemp(prefix=f'.{basename(file_path)}.',
                                 suffix='.tmp', dir=folder)
  os.close(handle)
  try:
    write(tmp)
    if remote:
      with open(tmp, 'rb') as source, open_file(file_path, 'wb') as target:
        shutil.copyfileobj(source, target, 1 << 22)
      os.remove(tmp)
      return
    # mkstemp makes the file private (0600); give it the permissions any
    # new file would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, absolute(file_path))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(file_path: str, text: str) -> None:
  """Replaces `file_path` by `text` atomically (process 0 only): a crash
  leaves the old file or the new one, never half of one.

  A local file is written beside and renamed; an object on Cloud Storage
  is replaced as a whole by its upload (a rename there would be a copy).
  """
  if jax.process_index() != 0:
    return
  if is_remote(file_path):
    with open_file(file_path, 'w') as f:
      f.write(text)
    return
  tmp = f'{file_path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, file_path)


def write_json(file_path: str, data: Any) -> None:
  """Writes `data` as JSON to `file_path` atomically (process 0 only)."""
  write_text(file_path, json.dumps(data, indent=2, sort_keys=True) + '\n')


def read_json(file_path: str) -> Any:
  """The JSON in `file_path`.

  Raises:
    InputError: the file is not valid JSON (e.g. cut short), naming it.
  """
  text = read_text(file_path)
  try:
    return json.loads(text)
  except ValueError as e:
    raise InputError(f'{file_path} is damaged (not valid JSON: {e}); move '
                     'it away') from e


def resolved_config(config) -> dict[str, Any]:
  """`config` as the JSON-able dict that ``config.json`` holds."""
  return json.loads(config.to_json_best_effort())


def write_config(workdir: str, config, network: dict[str, Any]) -> None:
  """``config.json``: the resolved config plus ``network``."""
  write_json(path(workdir, CONFIG_FILE),
             dict(resolved_config(config), network=network))


def read_config(workdir: str) -> dict[str, Any] | None:
  """The run's ``config.json``, or None if it has none."""
  file_path = path(workdir, CONFIG_FILE)
  return read_json(file_path) if exists(file_path) else None


def write_results(workdir: str, results: dict[str, Any]) -> None:
  """``results.json`` (see ``train.results`` for its fields)."""
  write_json(path(workdir, RESULTS_FILE), results)


def read_results(workdir: str) -> dict[str, Any] | None:
  """The run's ``results.json``, or None if it has none."""
  file_path = path(workdir, RESULTS_FILE)
  return read_json(file_path) if exists(file_path) else None


# --- The workdir lock -------------------------------------------------------
#
# One run per workdir. Two runs writing the same checkpoints and metrics
# race (one dies in the middle of an Orbax save); the second is refused.
# What makes the lock file's creation atomic depends on where it lives: a
# LockStore per kind of path.


class LockStore:
  """Where lock files live: an atomic create-if-absent, a read, a delete."""

  def create(self, file_path: str, text: str) -> bool:
    """Creates `file_path` holding `text` unless something is there.

    Returns:
      True if this call created it; False if it already existed. Of two
      calls at once, at most one returns True.
    """
    raise NotImplementedError

  def read(self, file_path: str) -> tuple[str, Any] | None:
    """``(text, version)`` of `file_path`, or None if there is none.

    `version` identifies this content for :meth:`delete` (None where the
    store cannot tell versions apart).
    """
    raise NotImplementedError

  def delete(self, file_path: str, version: Any = None) -> bool:
    """Deletes `file_path` if it is still `version` (any, if None).

    Returns:
      False if it was gone or had changed (another run took it over).
    """
    raise NotImplementedError

  def replace(self, file_path: str, text: str, version: Any = None
              ) -> tuple[bool, Any]:
    """Rewrites `file_path` with `text` if it is still `version`.

    Returns:
      ``(replaced, new_version)``; False if the lock changed or went.
    """
    raise NotImplementedError


class LocalLockStore(LockStore):
  """A local disk: ``O_EXCL`` makes the creation atomic (also over NFSv3+)."""

  def create(self, file_path: str, text: str) -> bool:
    try:
      descriptor = os.open(file_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                           0o644)
    except FileExistsError:
      return False
    with os.fdopen(descriptor, 'w') as f:
      f.write(text)
    return True

  def read(self, file_path: str) -> tuple[str, Any] | None:
    try:
      with open(file_path) as f:
        return f.read(), None
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return '', None  # Unreadable: taken as stale.

  def delete(self, file_path: str, version: Any = None) -> bool:
    del version  # A local file has no generation to compare.
    try:
      os.remove(file_path)
      return True
    except FileNotFoundError:
      return False

  def replace(self, file_path: str, text: str, version: Any = None
              ) -> tuple[bool, Any]:
    del version
    if not os.path.exists(file_path):
      return False, None
    # A rename is atomic: a reader sees the old or the new holder, whole.
    temporary = f'{file_path}.{os.getpid()}.tmp'
    with open(temporary, 'w') as f:
      f.write(text)
    os.replace(temporary, file_path)
    return True, None


def _http_status(error: BaseException) -> int | None:
  # google.api_core's exceptions carry the HTTP status as `code`
  # (PreconditionFailed: 412, NotFound: 404); matched by number so that
  # google-cloud-storage stays an optional dependency.
  code = getattr(error, 'code', None)
  return code if isinstance(code, int) else None


def _bucket_and_name(file_path: str) -> tuple[str, str]:
  bucket, _, name = absolute(file_path).split('://', 1)[1].partition('/')
  return bucket, name


class GcsLockStore(LockStore):
  """Cloud Storage through google-cloud-storage, with preconditions.

  ``if_generation_match=0`` uploads only if no live object has the name,
  and Cloud Storage checks it atomically on the server: of two runs
  creating the lock at once, exactly one succeeds (the other gets HTTP 412).
  A stale lock is deleted with ``if_generation_match`` set to the
  generation that was read, so a run never deletes a lock that another
  run has just taken over.
  """

  def __init__(self, client):
    """`client`: a ``google.cloud.storage.Client`` (or an object with its
    ``bucket(name).blob(name)`` / ``bucket(name).get_blob(name)`` API)."""
    self._client = client

  def _bucket(self, file_path: str):
    bucket, name = _bucket_and_name(file_path)
    return self._client.bucket(bucket), name

  def create(self, file_path: str, text: str) -> bool:
    bucket, name = self._bucket(file_path)
    try:
      bucket.blob(name).upload_from_string(
          text, content_type='application/json', if_generation_match=0)
    except Exception as e:  # pylint: disable=broad-except
      if _http_status(e) == 412:
        return False
      raise
    return True

  def read(self, file_path: str) -> tuple[str, Any] | None:
    bucket, name = self._bucket(file_path)
    for _ in range(5):
      blob = bucket.get_blob(name)
      if blob is None:
        return None
      try:
        return (blob.download_as_bytes(if_generation_match=blob.generation)
                .decode('utf-8', 'replace'), blob.generation)
      except Exception as e:  # pylint: disable=broad-except
        if _http_status(e) not in (404, 412):
          raise
        # Replaced or deleted between the two requests: look again.
    return '', None

  def delete(self, file_path: str, version: Any = None) -> bool:
    bucket, name = self._bucket(file_path)
    try:
      if version is None:
        bucket.blob(name).delete()
      else:
        bucket.blob(name).delete(if_generation_match=version)
    except Exception as e:  # pylint: disable=broad-except
      if _http_status(e) in (404, 412):
        return False
      raise
    return True

  def replace(self, file_path: str, text: str, version: Any = None
              ) -> tuple[bool, Any]:
    bucket, name = self._bucket(file_path)
    blob = bucket.blob(name)
    try:
      blob.upload_from_string(text, content_type='application/json',
                              if_generation_match=version)
    except Exception as e:  # pylint: disable=broad-except
      if _http_status(e) in (404, 412):
        return False, None
      raise
    found = self.read(file_path)
    return True, None if found is None else found[1]


class EpathLockStore(LockStore):
  """Any path etils.epath can write, best effort: no atomic primitive.

  Used for a remote workdir when google-cloud-storage is not installed
  (``pip install google-cloud-storage``), and for other URL schemes. The
  lock is written only if absent, then read back after `settle_s` seconds:
  a run that finds another run's lock there instead gives way. Two runs
  whose check and write are further apart than `settle_s` can both
  believe they hold it; runs started by hand minutes apart are refused as
  with an atomic lock.
  """

  def __init__(self, settle_s: float = 2.0):
    self._settle_s = settle_s

  def create(self, file_path: str, text: str) -> bool:
    if exists(file_path):
      return False
    with open_file(file_path, 'w') as f:
      f.write(text)
    time.sleep(self._settle_s)
    found = self.read(file_path)
    return found is not None and found[0] == text

  def read(self, file_path: str) -> tuple[str, Any] | None:
    try:
      return read_text(file_path), None
    except FileNotFoundError:
      return None

  def delete(self, file_path: str, version: Any = None) -> bool:
    del version
    if not exists(file_path):
      return False
    remove(file_path)
    return True

  def replace(self, file_path: str, text: str, version: Any = None
              ) -> tuple[bool, Any]:
    del version
    if not exists(file_path):
      return False, None
    write_text(file_path, text)
    return True, None


_LOCAL_LOCK_STORE = LocalLockStore()
# Per URL scheme ('gs'): chosen on first use, or set by set_lock_store.
_lock_stores: dict[str, LockStore] = {}


def set_lock_store(scheme: str, store: LockStore | None) -> None:
  """Uses `store` for the locks of ``scheme://`` workdirs (None: choose
  again on next use). For tests, and for a file system with its own
  atomic primitive."""
  if store is None:
    _lock_stores.pop(scheme, None)
  else:
    _lock_stores[scheme] = store


def _gcs_client():
  """A google-cloud-storage client, or None if the package is missing."""
  try:
    from google.cloud import storage  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return storage.Client()


def lock_store(file_path: str) -> LockStore:
  """The LockStore for a lock at `file_path` (see :func:`lock`)."""
  if not is_remote(file_path):
    return _LOCAL_LOCK_STORE
  scheme = absolute(file_path).split('://', 1)[0]
  if scheme not in _lock_stores:
    client = None
    if scheme == 'gs':
      try:
        client = _gcs_client()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('google-cloud-storage cannot make a client (%s: %s)',
                        type(e).__name__, first_line(e))
    if client is not None:
      _lock_stores[scheme] = GcsLockStore(client)
    else:
      logging.warning(
          'The lock of %s:// workdirs is best effort: two runs started '
          'within seconds of each other may both take it. %s', scheme,
          'pip install google-cloud-storage makes it atomic.'
          if scheme == 'gs' else '')
      _lock_stores[scheme] = EpathLockStore()
  return _lock_stores[scheme]


def _parse_holder(text: str) -> dict[str, Any]:
  try:
    holder = json.loads(text)
  except ValueError:
    return {}  # Cut short by a crash while it was written: stale.
  return holder if isinstance(holder, dict) else {}


def _lock_holder(workdir: str) -> dict[str, Any] | None:
  """The holder written in the workdir's lock, or None if there is none."""
  file_path = path(workdir, LOCK_FILE)
  found = lock_store(file_path).read(file_path)
  return None if found is None else _parse_holder(found[0])


# A running run rewrites its lock's heartbeat this often, from a thread of
# its own; a lock of another host whose heartbeat is older than
# LOCK_LEASE_S is stale (its run is gone: a preempted VM, a killed job).
# The lease leaves room for clocks that disagree by minutes.
LOCK_HEARTBEAT_S = 60.0
LOCK_LEASE_S = 900.0


def _heartbeat_age(holder: dict[str, Any]) -> float | None:
  """Seconds since the holder's last heartbeat (None: it has none)."""
  beat = holder.get('heartbeat')
  if not isinstance(beat, (int, float)) or isinstance(beat, bool):
    return None
  return time.time() - beat


def _is_stale(holder: dict[str, Any]) -> bool:
  """Whether the run that wrote `holder` is known to be gone.

  A process of this host is checked by its pid. A lock of another host is
  stale once its heartbeat is older than :data:`LOCK_LEASE_S`; one without
  a heartbeat is taken as live (its message says how to remove it).
  """
  if holder.get('host') != socket.gethostname():
    if not holder:
      return True  # An unreadable lock is stale.
    age = _heartbeat_age(holder)
    return age is not None and age > LOCK_LEASE_S
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return True
  except (KeyError, TypeError, ValueError):
    return True
  except PermissionError:
    return False  # Alive, another user's.
  return int(holder['pid']) == os.getpid()  # Our own: a leftover of ours.


def _locked_error(workdir: str, holder: dict[str, Any]) -> InputError:
  lock_path = path(workdir, LOCK_FILE)
  delete = (f'gcloud storage rm {lock_path}' if is_remote(lock_path) else
            f'delete {lock_path}')
  age = _heartbeat_age(holder)
  beat = ('' if age is None else
          f', last heard from {max(age, 0):.0f} s ago; taken over by itself '
          f'{LOCK_LEASE_S:.0f} s after that')
  return InputError(
      f'--workdir={workdir} is in use by another run (host '
      f"{holder.get('host')}, process {holder.get('pid')}, started "
      f"{holder.get('started')}{beat}): wait for it, or use another "
      f'--workdir. If that run is gone (killed on another host), {delete}.')


def check_not_locked(workdir: str) -> None:
  """Raises InputError if a live run holds `workdir` (reads only)."""
  holder = _lock_holder(workdir)
  if holder is not None and not _is_stale(holder):
    raise _locked_error(workdir, holder)


@contextlib.contextmanager
def lock(workdir: str):
  """Holds `workdir`'s lock while the body runs (process 0 takes it).

  The lock file is created atomically: with ``O_EXCL`` on a local disk,
  with a Cloud Storage precondition (``if_generation_match=0``) for a
  ``gs://`` workdir when google-cloud-storage is installed, best effort
  otherwise (see :func:`lock_store`). Of two runs started at once, one
  gets it and the other is refused. A lock left by a killed run of this
  host is stale: it is taken over with a warning.

  Raises:
    InputError: a live run holds the workdir.
  """
  if jax.process_index() != 0:
    yield
    return
  if not is_remote(workdir):
    os.makedirs(path(workdir, ''), exist_ok=True)
  file_path = path(workdir, LOCK_FILE)
  store = lock_store(file_path)
  holder = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': datetime.datetime.now().astimezone().isoformat(
                timespec='seconds'), 'heartbeat': time.time()}
  while not store.create(file_path, json.dumps(holder) + '\n'):
    found = store.read(file_path)
    if found is None:
      continue  # Released in between: try again.
    previous = _parse_holder(found[0])
    if not _is_stale(previous):
      raise _locked_error(workdir, previous) from None
    logging.warning('Taking over the stale lock of a run that is gone '
                    '(%s): %s', previous or 'unreadable', file_path)
    # Only the version read: if another run took it over meanwhile, its
    # lock stays and the next create fails on it.
    store.delete(file_path, found[1])
  stop = threading.Event()
  beating = threading.Thread(target=_beat, args=(store, file_path, holder,
                                                 stop),
                             name='rotnet-lock-heartbeat', daemon=True)
  beating.start()
  try:
    yield
  finally:
    stop.set()
    beating.join()
    store.delete(file_path)


def _beat(store: LockStore, file_path: str, holder: dict[str, Any],
          stop: threading.Event) -> None:
  """Rewrites the lock's heartbeat every LOCK_HEARTBEAT_S until `stop`."""
  found = store.read(file_path)
  version = None if found is None else found[1]
  while not stop.wait(LOCK_HEARTBEAT_S):
    try:
      replaced, version = store.replace(
          file_path, json.dumps(dict(holder, heartbeat=time.time())) + '\n',
          version)
    except Exception as e:  # pylint: disable=broad-except
      # A lost heartbeat costs nothing until the lease runs out; training
      # goes on.
      logging.warning('Could not renew the lock %s (%s: %s).', file_path,
                      type(e).__name__, first_line(e))
      continue
    if not replaced:
      logging.warning('The lock %s was removed or taken over by another '
                      'run; this run no longer renews it.', file_path)
      return
