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

Paths go through ``filesystem`` (local or ``gs://``); the lock is
``lock.py``'s; the checkpoints are ``checkpoint.py``'s.
"""

import json
from typing import Any

import jax

from rotnet_jax.errors import InputError
from rotnet_jax.workdir import filesystem

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINTS_DIR = 'checkpoints'
TENSORBOARD_DIR = 'tensorboard'
# Checkpoints that could not be read on resume are moved here.
DAMAGED_CHECKPOINTS_DIR = 'damaged_checkpoints'
# A detection run's test detections, one devkit results file per class.
DETECTIONS_DIR = 'detections'
# Held by the run training in the workdir (one run per workdir).
LOCK_FILE = 'run.lock'


def path(workdir: Any, name: str) -> str:
  """``WORKDIR/name``, absolute (a URL stays a URL)."""
  return filesystem.join(workdir, name)


# What each entry of a workdir must be, if it exists.
_FILES = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, LOCK_FILE)
_FOLDERS = (CHECKPOINTS_DIR, TENSORBOARD_DIR, DAMAGED_CHECKPOINTS_DIR,
            DETECTIONS_DIR)


def check_workdir(workdir: str) -> None:
  """Raises InputError unless `workdir` can hold a run.

  It must be a folder (or creatable as one) that can be written, and what
  it already holds must be what a run writes there: ``config.json``,
  ``metrics.jsonl`` and ``results.json`` files, ``checkpoints/`` and
  ``tensorboard/`` folders. Reads only, except on Cloud Storage, where a
  probe object is written and deleted (see ``check_writable_folder``).
  """
  filesystem.check_writable_folder(workdir, '--workdir')
  for name in _FILES:
    entry = filesystem.resolve(path(workdir, name))
    if entry.exists() and not entry.is_file():
      raise InputError(f'{entry} should be a file (the run writes its '
                       f'{name} there) but is not: move it away')
  for name in _FOLDERS:
    entry = filesystem.resolve(path(workdir, name))
    if entry.exists() and not entry.is_dir():
      raise InputError(f'{entry} should be a folder (the run keeps its '
                       f'{name} there) but is a file: move it away')


def resolved_config(config) -> dict[str, Any]:
  """`config` as the JSON-able dict that ``config.json`` holds."""
  return json.loads(config.to_json_best_effort())


def write_config(workdir: str, config, network: dict[str, Any]) -> None:
  """``config.json``: the resolved config plus ``network``."""
  filesystem.write_json(path(workdir, CONFIG_FILE),
                        dict(resolved_config(config), network=network))


def read_config(workdir: str) -> dict[str, Any] | None:
  """The run's ``config.json``, or None if it has none."""
  file_path = path(workdir, CONFIG_FILE)
  return (filesystem.read_json(file_path)
          if filesystem.resolve(file_path).exists() else None)


def write_results(workdir: str, results: dict[str, Any]) -> None:
  """``results.json`` (see ``train.results`` for its fields)."""
  filesystem.write_json(path(workdir, RESULTS_FILE), results)


def write_detections(workdir: str, files: dict[str, str]) -> None:
  """``WORKDIR/detections/<name>`` for each ``{name: text}`` (process 0)."""
  if jax.process_index() == 0:
    filesystem.resolve(path(workdir, DETECTIONS_DIR)).mkdir(
        parents=True, exist_ok=True)
  for name, text in files.items():
    filesystem.write_text(path(workdir, f'{DETECTIONS_DIR}/{name}'), text)


def read_results(workdir: str) -> dict[str, Any] | None:
  """The run's ``results.json``, or None if it has none."""
  file_path = path(workdir, RESULTS_FILE)
  return (filesystem.read_json(file_path)
          if filesystem.resolve(file_path).exists() else None)
