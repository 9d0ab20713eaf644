"""Two processes through jax.distributed, as on a multi-host TPU or GPU pod.

Two processes of one CPU device each must train exactly (bit for bit) the
model that one process of two CPU devices trains: the same global batches,
the same programs, the same all-reduce order. Against one
device the summation order differs; in float64 that leaves differences of
about 1e-15, so the test asks for 1e-6 (in float32 the same drift reaches
several percent after 5 steps, too much to tell rounding from a bug).
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import max_relative_difference
from helpers import REPO_ROOT, tiny_config
from rotnet_jax import parallel
from rotnet_jax.training import train

_WORKER = os.path.join(REPO_ROOT, 'tests', 'multihost_worker.py')

# 500 digits in batches of 100: 5 steps, one epoch, one test.
_OVERRIDES = {'batch_size': 100}


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _load(path):
  with np.load(path) as data:
    return [data[k] for k in sorted(data.files, key=lambda k: int(k[4:]))]


def _run_in_subprocesses(tmp_path, overrides, roles):
  """Runs multihost_worker.py once per role, all at once.

  Returns:
    ``{role: (workdir, [final params and batch_stats leaves])}``.
  """
  port = _free_port()
  runs, workers = {}, []
  for role in roles:
    workdir = str(tmp_path / ('local2' if role == 'local2'
                              else 'two_processes'))
    out = str(tmp_path / f'variables_{role}.npz')
    runs[role] = (workdir, out)
    workers.append(subprocess.Popen(
        [sys.executable, _WORKER, role, str(port), workdir,
         json.dumps(overrides), out], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = [w.communicate(timeout=900)[0] for w in workers]
  for role, worker, log in zip(roles, workers, logs):
    assert worker.returncode == 0, f'{role}: {log[-3000:]}'
  return {role: (workdir, _load(out)) for role, (workdir, out) in runs.items()}


def _in_process(config, workdir, num_devices):
  """``(params, batch_stats)`` leaves after training on `num_devices`."""
  state = train.train_and_evaluate(
      config, workdir, mesh=parallel.make_mesh(jax.devices()[:num_devices]))
  return [np.asarray(x) for x in jax.tree.leaves(
      jax.device_get((state.params, state.batch_stats)))]


def _check_run_files(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    events = [json.loads(line) for line in f]
  # Process 0 alone writes: one test event for the one epoch.
  assert [e['split'] for e in events].count('test') == 1
  assert events[-1]['split'] == 'test' and np.isfinite(events[-1]['loss'])
  # The accuracy counts correct answers among the 297 x 4 rotated test
  # images, summed over both processes.
  correct = events[-1]['accuracy'] * 297 * 4
  assert abs(correct - round(correct)) < 1e-6
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['5']
  with open(os.path.join(workdir, 'results.json')) as f:
    (head,) = json.load(f)['heads']
  assert head['test_samples'] == 297 * 4
  assert head['final_test_accuracy'] == events[-1]['accuracy']


# Three processes each: both tests are the slow tier (a distributed start-up
# is in the default run: test_startup_errors.py).
@pytest.mark.slow
def test_two_processes_train_what_two_devices_in_one_process_train(
    tmp_path):
  overrides = dict(_OVERRIDES, pipeline='device')
  runs = _run_in_subprocesses(tmp_path, overrides, ('0', '1', 'local2'))
  workdir, variables0 = runs['0']
  for a, b in zip(variables0, runs['1'][1]):
    np.testing.assert_array_equal(a, b)  # Replicas agree exactly.
  _check_run_files(workdir)
  two_devices = runs['local2'][1]
  assert len(two_devices) == len(variables0)
  for a, b in zip(variables0, two_devices):
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_processes_reading_their_own_batches_train_what_one_device_trains(
    tmp_path, enable_x64):
  # The tf.data pipeline: each process reads only its half of every batch.
  # Float64, as a 5-step float32 run drifts from one device's by up to 5%
  # per array (and from one process of 2 devices by about 1%, measured).
  del enable_x64  # The processes start with JAX_ENABLE_X64=1 themselves.
  overrides = dict(_OVERRIDES, pipeline='tfdata', float64=True)
  runs = _run_in_subprocesses(tmp_path, overrides, ('0', '1'))
  workdir, variables0 = runs['0']
  for a, b in zip(variables0, runs['1'][1]):
    np.testing.assert_array_equal(a, b)
  _check_run_files(workdir)
  one_device = _in_process(tiny_config(**overrides),
                           str(tmp_path / 'one_device'), 1)
  assert {a.dtype for a in variables0 + one_device} == {np.dtype('float64')}
  # Measured: 3e-15 after the 5 steps.
  assert max_relative_difference(variables0, one_device) < 1e-6
