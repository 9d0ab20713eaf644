"""The workdir lock: one run per workdir.

Two runs writing the same checkpoints and metrics race (one dies in the
middle of an Orbax save); the second is refused. What makes the lock
file's creation atomic depends on where it lives: a LockStore per kind of
path (``O_EXCL`` locally, a generation precondition on Cloud Storage). A
live run renews a heartbeat in the file, so that the lock of a run that is
gone (a preempted VM) is taken over after a lease.

Every command that writes a workdir takes the lock (training,
``import_torch``) or respects it (``export`` and ``extract`` write no
file inside a locked workdir: :func:`check_not_inside_locked`).
"""

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from typing import Any

import jax
from absl import logging

from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir.filesystem import absolute
from rotnet_jax.workdir.filesystem import is_remote
from rotnet_jax.workdir.run_files import LOCK_FILE
from rotnet_jax.workdir.run_files import path


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
    if filesystem.resolve(file_path).exists():
      return False
    filesystem.resolve(file_path).write_text(text)
    time.sleep(self._settle_s)
    found = self.read(file_path)
    return found is not None and found[0] == text

  def read(self, file_path: str) -> tuple[str, Any] | None:
    try:
      return filesystem.resolve(file_path).read_text(), None
    except FileNotFoundError:
      return None

  def delete(self, file_path: str, version: Any = None) -> bool:
    del version
    if not filesystem.resolve(file_path).exists():
      return False
    filesystem.resolve(file_path).unlink()
    return True

  def replace(self, file_path: str, text: str, version: Any = None
              ) -> tuple[bool, Any]:
    del version
    if not filesystem.resolve(file_path).exists():
      return False, None
    filesystem.write_text(file_path, text)
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


# The lock files this process holds (a `lock` body is running). A lock
# naming this process is live only if it is one of them; otherwise an
# earlier process that had the same id left it (ids are reused, soon in a
# container).
_held: set[str] = set()


def _is_stale(holder: dict[str, Any], file_path: str) -> bool:
  """Whether the run that wrote `holder` into `file_path` is known to be
  gone.

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
  if int(holder['pid']) != os.getpid():
    return False
  # This process: live while a `lock` of ours holds the file (another
  # writer in this process, e.g. an import while a notebook trains).
  return file_path not in _held


def _locked_error(workdir: str, holder: dict[str, Any],
                  subject: str | None = None,
                  instead: str = 'use another --workdir') -> InputError:
  """The refusal of a writer onto the locked `workdir`.

  Args:
    workdir: the locked workdir.
    holder: what its lock says of the run holding it.
    subject: what the writer was asked to write (default: the workdir).
    instead: what the user may do instead of waiting.
  """
  lock_path = path(workdir, LOCK_FILE)
  delete = (f'gcloud storage rm {lock_path}' if is_remote(lock_path) else
            f'delete {lock_path}')
  age = _heartbeat_age(holder)
  beat = ('' if age is None else
          f', last heard from {max(age, 0):.0f} s ago; taken over by itself '
          f'{LOCK_LEASE_S:.0f} s after that')
  subject = subject or f'--workdir={workdir}'
  return InputError(
      f'{subject} is in use by another run (host '
      f"{holder.get('host')}, process {holder.get('pid')}, started "
      f"{holder.get('started')}{beat}): wait for it, or {instead}. If that "
      f'run is gone (killed on another host), {delete}.')


def _live_holder(workdir: str) -> dict[str, Any] | None:
  """The holder of `workdir`'s lock if its run is live, else None."""
  holder = _lock_holder(workdir)
  if holder is None or _is_stale(holder, path(workdir, LOCK_FILE)):
    return None
  return holder


def check_not_locked(workdir: str) -> None:
  """Raises InputError if a live run holds `workdir` (reads only)."""
  holder = _live_holder(workdir)
  if holder is not None:
    raise _locked_error(workdir, holder)


def check_not_inside_locked(file_path: str, what: str) -> None:
  """Raises InputError if `file_path` is inside a workdir a live run holds.

  For commands that write one file of their own (an export, extracted
  features) wherever the user asks: a workdir's lock means that nothing
  but its run writes there, so such a file goes elsewhere until the run
  ends (an import replacing the workdir would also delete it). Reads
  only: the lock of every folder above `file_path`.

  Args:
    file_path: the file to be written.
    what: how the command names it (``'--out'``, ``'the output'``).
  """
  folder = filesystem.parent(file_path)
  while True:
    holder = _live_holder(folder)
    if holder is not None:
      raise _locked_error(
          folder, holder, subject=f'{what} {file_path} is inside the '
          f'workdir {folder}, which', instead=f'write {what} elsewhere')
    above = filesystem.parent(folder)
    if above == folder:
      return
    folder = above


def copy_into(workdir: str, folder: str) -> None:
  """Puts the lock this process holds on local `workdir` into `folder` too.

  For a writer that replaces the whole workdir by renaming `folder` onto
  it (``import_torch --overwrite``): the new workdir is locked from the
  moment it appears, and :func:`lock` releases it there as usual.
  """
  file_path = path(workdir, LOCK_FILE)
  if file_path not in _held:
    raise ValueError(f'{file_path} is not held by this process')
  with open(file_path) as f:
    text = f.read()
  with open(os.path.join(folder, LOCK_FILE), 'w') as f:
    f.write(text)


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
    if not _is_stale(previous, file_path):
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
  _held.add(file_path)
  beating.start()
  try:
    yield
  finally:
    stop.set()
    beating.join()
    _held.discard(file_path)
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
