"""Files and folders, local or remote: what ``etils.epath`` does not do.

Every path of a run may be a local one or a Cloud Storage URL
(``gs://bucket/...``; also the other schemes ``etils.epath`` knows:
``s3://``, ``az://``, ``hf://``). Reading, listing and testing paths is
epath's job (:func:`resolve` gives the ``epath.Path``); this module keeps
only what epath lacks, each for the reason in its docstring: ``~`` and
URL-aware absolute paths kept as strings (messages show them as typed),
atomic replacement, a writability check that writes nothing locally and
probes a bucket, free disk space, and local copies for readers that take
only a local file.
"""

import contextlib
import json
import os
import posixpath
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jax
from etils import epath

from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line

# The URL schemes etils.epath sends to a cloud file system.
REMOTE_PREFIXES = ('gs://', 's3://', 'az://', 'hf://')


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


def join(folder: Any, *names: str) -> str:
  """``folder/name/...`` as an :func:`absolute` string (a URL stays one)."""
  return posixpath.join(absolute(folder), *names)


def parent(file_path: Any) -> str:
  """The folder that holds `file_path`, as a string (a bucket's root keeps
  its scheme)."""
  full = absolute(file_path)
  if is_remote(full):
    scheme, rest = full.split('://', 1)
    head = posixpath.dirname(rest)
    return f'{scheme}://{head}' if head else f'{scheme}://{rest}'
  return os.path.dirname(full)


def relative(file_path: Any, start: Any) -> str:
  """`file_path` relative to the folder `start` (both local or both URLs)."""
  full, root = absolute(file_path), absolute(start)
  if is_remote(full):
    return posixpath.relpath(full.split('://', 1)[1], root.split('://', 1)[1])
  return os.path.relpath(full, root)


def resolve(file_path: Any) -> epath.Path:
  """`file_path` as an ``etils.epath.Path``, made :func:`absolute` first.

  Everything else (exists, is_dir, open, read_text, mkdir, unlink,
  iterdir, walk, stat) is epath's own, for local paths and URLs alike;
  epath alone would leave ``~`` unexpanded.
  """
  return epath.Path(absolute(file_path))


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
                                 suffix=f'-{resolve(file_path).name}')
  try:
    with os.fdopen(handle, 'wb') as target, resolve(file_path).open(
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
    if resolve(full).is_file():
      raise InputError(f'{what}={folder!r} is a file, not a folder')
    probe = join(full, f'{_PROBE_PREFIX}.{socket.gethostname()}.'
                 f'{os.getpid()}.{uuid.uuid4().hex[:8]}')
    resolve(probe).write_text(
        'rotnet-jax checks that this folder can be written\n')
    resolve(probe).unlink()
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Credentials, a missing bucket, a denied permission: each library
    # (TensorFlow's GCS file system, gcsfs) has its own error classes.
    raise InputError(f'{what}={folder!r} cannot be written ({type(e).__name__}'
                     f': {first_line(e)}): check the bucket name and that '
                     'this machine\'s credentials may write it') from e


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
  if resolve(full).is_dir():
    raise InputError(f'{what}={out!r} is a folder: name a file in it')
  if resolve(full).exists() and not overwrite:
    raise InputError(f'{what}={out!r} already exists: pass --overwrite to '
                     'replace it, or choose another name')
  check_writable_folder(parent(full), f'the folder of {what}')
  return full


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
  handle, tmp = tempfile.mkstemp(prefix=f'.{resolve(file_path).name}.',
                                 suffix='.tmp', dir=folder)
  os.close(handle)
  try:
    write(tmp)
    if remote:
      with open(tmp, 'rb') as source, resolve(file_path).open('wb') as target:
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
    resolve(file_path).write_text(text)
    return
  tmp = f'{file_path}.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, file_path)
  except BaseException:
    # A failed write (a full disk, Ctrl-C) leaves no half file beside.
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_json(file_path: str, data: Any) -> None:
  """Writes `data` as JSON to `file_path` atomically (process 0 only)."""
  write_text(file_path, json.dumps(data, indent=2, sort_keys=True) + '\n')


def read_json(file_path: str) -> Any:
  """The JSON in `file_path`.

  Raises:
    InputError: the file is not valid JSON (e.g. cut short), naming it.
  """
  text = resolve(file_path).read_text()
  try:
    return json.loads(text)
  except ValueError as e:
    raise InputError(f'{file_path} is damaged (not valid JSON: {e}); move '
                     'it away') from e

