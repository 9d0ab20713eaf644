"""The files of a run's workdir: their names, and how they are written.

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
"""

import contextlib
import datetime
import json
import os
import socket
import tempfile
from typing import Any

import jax
from absl import logging

from rotnet_jax.errors import InputError

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINTS_DIR = 'checkpoints'
TENSORBOARD_DIR = 'tensorboard'
# Checkpoints that could not be read on resume are moved here.
DAMAGED_CHECKPOINTS_DIR = 'damaged_checkpoints'
# Held by the run training in the workdir (one run per workdir).
LOCK_FILE = 'run.lock'


def path(workdir: str, name: str) -> str:
  """``WORKDIR/name``, with ``~`` expanded and made absolute."""
  return os.path.join(_absolute(workdir), name)


# What each entry of a workdir must be, if it exists.
_FILES = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, LOCK_FILE)
_FOLDERS = (CHECKPOINTS_DIR, TENSORBOARD_DIR, DAMAGED_CHECKPOINTS_DIR)


def _absolute(folder: str) -> str:
  return os.path.abspath(os.path.expanduser(folder))


def nearest_existing(folder: str) -> str:
  """`folder` (absolute) if it exists, else its nearest existing ancestor."""
  existing = _absolute(folder)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  return existing


def check_writable_folder(folder: str, what: str) -> None:
  """Raises InputError unless `folder` is, or can be made, a writable folder.

  Nothing is created: the nearest existing ancestor must be a writable
  folder.

  Args:
    folder: the path.
    what: how to name it in the message (e.g. ``--workdir``).
  """
  if not folder or not folder.strip():
    raise InputError(f'{what} is empty: pass a folder')
  existing = nearest_existing(folder)
  if not os.path.isdir(existing):
    raise InputError(
        f'{what}={folder!r} cannot be a folder: {existing} is a file' if
        existing != _absolute(folder) else f'{what}={folder!r} is a file, '
        'not a folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f'{what}={folder!r} cannot be written: {existing} is '
                     'not writable')


def check_workdir(workdir: str) -> None:
  """Raises InputError unless `workdir` can hold a run.

  It must be a folder (or creatable as one), and what it already holds
  must be what a run writes there: ``config.json``, ``metrics.jsonl`` and
  ``results.json`` files, ``checkpoints/`` and ``tensorboard/`` folders.
  Reads only.
  """
  check_writable_folder(workdir, '--workdir')
  for name in _FILES:
    entry = path(workdir, name)
    if os.path.lexists(entry) and not os.path.isfile(entry):
      raise InputError(f'{entry} should be a file (the run writes its '
                       f'{name} there) but is not: move it away')
  for name in _FOLDERS:
    entry = path(workdir, name)
    if os.path.lexists(entry) and not os.path.isdir(entry):
      raise InputError(f'{entry} should be a folder (the run keeps its '
                       f'{name} there) but is a file: move it away')


def check_output_file(out: str, *, what: str, suffix: str,
                      overwrite: bool) -> str:
  """The absolute path `out`, if a command may write its output file there.

  Args:
    out: the path given.
    what: how to name it in messages (e.g. ``'--out'``).
    suffix: the ending the file must have (readers recognise it by it).
    overwrite: whether an existing file may be replaced.

  Raises:
    InputError: empty, another suffix, a folder, an existing file without
      `overwrite`, or a folder that cannot be written.
  """
  if not out or not out.strip():
    raise InputError(f'{what} is empty: name the {suffix} file to write')
  full = _absolute(out)
  if not full.endswith(suffix):
    raise InputError(f'{what}={out!r} must end in {suffix} (that is how '
                     'the readers recognise it)')
  if os.path.isdir(full):
    raise InputError(f'{what}={out!r} is a folder: name a file in it')
  if os.path.lexists(full) and not overwrite:
    raise InputError(f'{what}={out!r} already exists: pass --overwrite to '
                     'replace it, or choose another name')
  check_writable_folder(os.path.dirname(full), f'the folder of {what}')
  return full


def write_file_atomically(file_path: str, write) -> None:
  """Calls ``write(temporary_path)``, then renames it to `file_path`.

  The temporary file lives beside `file_path` (same file system, so the
  rename is atomic): an interrupted write leaves no partial file, and an
  existing one is replaced only once the new one is complete.
  """
  folder = os.path.dirname(_absolute(file_path))
  os.makedirs(folder, exist_ok=True)
  handle, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(file_path)}.',
                                 suffix='.tmp', dir=folder)
  os.close(handle)
  try:
    write(tmp)
    # mkstemp makes the file private (0600); give it the permissions any
    # new file would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, file_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(file_path: str, text: str) -> None:
  """Replaces `file_path` by `text` atomically (process 0 only): a crash
  leaves the old file or the new one, never half of one."""
  if jax.process_index() != 0:
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
  with open(file_path) as f:
    text = f.read()
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
  return read_json(file_path) if os.path.exists(file_path) else None


def write_results(workdir: str, results: dict[str, Any]) -> None:
  """``results.json`` (see ``train.results`` for its fields)."""
  write_json(path(workdir, RESULTS_FILE), results)


def read_results(workdir: str) -> dict[str, Any] | None:
  """The run's ``results.json``, or None if it has none."""
  file_path = path(workdir, RESULTS_FILE)
  return read_json(file_path) if os.path.exists(file_path) else None


# One run per workdir. Two runs writing the same checkpoints and metrics
# race (one dies in the middle of an Orbax save); the second is refused.


def _lock_holder(workdir: str) -> dict[str, Any] | None:
  """The holder written in the workdir's lock, or None if there is none."""
  try:
    with open(path(workdir, LOCK_FILE)) as f:
      holder = json.loads(f.read())
    return holder if isinstance(holder, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # Cut short by a crash while it was written: stale.


def _is_stale(holder: dict[str, Any]) -> bool:
  """Whether the run that wrote `holder` is known to be gone.

  Only a process of this host can be checked; a lock of another host is
  taken as live (its message says how to remove it).
  """
  if holder.get('host') != socket.gethostname():
    return not holder  # An unreadable lock is stale.
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
  return InputError(
      f'--workdir={workdir} is in use by another run (host '
      f"{holder.get('host')}, process {holder.get('pid')}, started "
      f"{holder.get('started')}): wait for it, or use another --workdir. If "
      f'that run is gone (killed on another host), delete '
      f'{path(workdir, LOCK_FILE)}.')


def check_not_locked(workdir: str) -> None:
  """Raises InputError if a live run holds `workdir` (reads only)."""
  holder = _lock_holder(workdir)
  if holder is not None and not _is_stale(holder):
    raise _locked_error(workdir, holder)


@contextlib.contextmanager
def lock(workdir: str):
  """Holds `workdir`'s lock while the body runs (process 0 takes it).

  The lock file is created atomically (``O_EXCL``): of two runs started
  at once, one gets it and the other is refused. A lock left by a killed
  run of this host is stale: it is taken over with a warning.

  Raises:
    InputError: a live run holds the workdir.
  """
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(path(workdir, ''), exist_ok=True)
  file_path = path(workdir, LOCK_FILE)
  holder = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': datetime.datetime.now().astimezone().isoformat(
                timespec='seconds')}
  while True:
    try:
      descriptor = os.open(file_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                           0o644)
      break
    except FileExistsError:
      previous = _lock_holder(workdir)
      if previous is None:
        continue  # Released in between: try again.
      if not _is_stale(previous):
        raise _locked_error(workdir, previous) from None
      logging.warning('Taking over the stale lock of a run that is gone '
                      '(%s): %s', previous or 'unreadable', file_path)
      with contextlib.suppress(FileNotFoundError):
        os.remove(file_path)
  with os.fdopen(descriptor, 'w') as f:
    f.write(json.dumps(holder) + '\n')
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(file_path)
