"""The files of a run's workdir: their names, and how they are written.

    WORKDIR/
      config.json     the resolved config, plus "network" (what rebuilds it)
      metrics.jsonl   one JSON object per logged event (metrics.MetricWriter)
      results.json    per head: final and best test accuracy (write_results)
      checkpoints/    Orbax checkpoints (checkpoint.Checkpointer)
      tensorboard/    event files, when tensorboardX is installed

Training, ``rotnet_jax.reproduce`` and ``rotnet_jax.report`` all find the
files through this module. JSON files are replaced atomically, so a crash
never leaves half a file, and only process 0 writes.
"""

import json
import os
from typing import Any

import jax

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINTS_DIR = 'checkpoints'
TENSORBOARD_DIR = 'tensorboard'


def path(workdir: str, name: str) -> str:
  """``WORKDIR/name``, with ``~`` expanded and made absolute."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), name)


def write_json(file_path: str, data: Any) -> None:
  """Writes `data` to `file_path` atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = f'{file_path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, file_path)


def read_json(file_path: str) -> Any:
  with open(file_path) as f:
    return json.load(f)


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
