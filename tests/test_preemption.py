"""Preemption (SIGTERM), crashes (SIGKILL) and resuming in mid-epoch.

The promise under test: however a run is stopped, re-running the same
command ends with the parameters, bit for bit, and the metric events of a
run that was never stopped (same device count, CPU). Stopped runs are real
processes (``preemption_worker.py``) sent real signals.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import logging

from helpers import REPO_ROOT, tiny_config
from rotnet_jax import data as data_lib
from rotnet_jax.errors import InputError
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import preemption
from rotnet_jax.training import train
from rotnet_jax.workdir import checkpoint as checkpoint_lib

_WORKER = os.path.join(REPO_ROOT, 'tests', 'preemption_worker.py')

# 500 digits in batches of 16: 31 steps per epoch, 62 in all. Log lines
# every 4 steps, so that checkpoints (every 10 steps) fall between two of
# them and carry the per-step sums of the lines to come.
_STEPS_PER_EPOCH = 31
_RUN = {'num_epochs': 2, 'batch_size': 16, 'log_every_steps': 4,
        'learning_rate_table': ((1, 0.1), (2, 0.02)),
        'checkpoint_every_epochs': 1, 'keep_checkpoints': 10}


def _env(**extra):
  """The worker's environment: the test session's (its XLA flags, so the
  same device setup, and its compilation cache: see conftest.py)."""
  return dict(os.environ, PYTHONUNBUFFERED='1', **extra)


def _start(workdir, overrides=None, **env):
  return subprocess.Popen(
      [sys.executable, _WORKER, str(workdir),
       json.dumps(dict(_RUN, **(overrides or {})))],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env=_env(**env))


def _run(workdir, overrides=None, **env):
  """Runs the worker to its end; returns ``(exit status, log)``."""
  worker = _start(workdir, overrides, **env)
  log = worker.communicate(timeout=300)[0]
  return worker.returncode, log


def _run_and_signal(workdir, when, signum, overrides=None):
  """Starts the worker and sends it `signum` once a log line contains
  `when`; returns ``(exit status, log)``."""
  worker = _start(workdir, overrides)
  lines = []
  for line in worker.stdout:
    lines.append(line)
    if when in line:
      worker.send_signal(signum)
      break
  lines.append(worker.communicate(timeout=300)[0])
  log = ''.join(lines)
  assert when in log, log[-3000:]
  return worker.returncode, log


def _final(workdir):
  """``(leaves of the newest checkpoint's model, its meta)``."""
  checkpoints = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
  try:
    step = checkpoints.latest_step()
    model = checkpoints.restore_untyped(step)
    return jax.tree.leaves(model), checkpoints.read_meta(step)
  finally:
    checkpoints.close()


def _events(workdir):
  """The metric events, without the speed (the one thing a resume
  changes)."""
  return [{k: v for k, v in e.items() if k != 'images_per_sec'}
          for e in metrics_lib.read_jsonl(str(workdir))]


def _assert_same_run(workdir, reference):
  leaves, meta = _final(workdir)
  expected_leaves, expected_meta = reference['final']
  assert len(leaves) == len(expected_leaves)
  for a, b in zip(leaves, expected_leaves):
    np.testing.assert_array_equal(a, b)  # Bit for bit.
  for key in ('epoch', 'epoch_step', 'step', 'best', 'train_sums'):
    assert meta[key] == expected_meta[key], key
  assert _events(workdir) == reference['events']


def _steps_on_disk(workdir):
  return sorted(int(name) for name in
                os.listdir(os.path.join(workdir, 'checkpoints'))
                if name.isdigit())


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The run never stopped, in a worker process like the stopped ones."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  status, log = _run(workdir)
  assert status == 0, log[-3000:]
  return {'final': _final(workdir), 'events': _events(workdir)}


# A worker run stopped by SIGTERM and its rerun: the slow tier (the default
# run stops a run with a signal in this process, test_interrupt.py, and
# resumes mid-epoch bit-identically,
# test_checkpoint_every_steps_saves_mid_epoch_and_resumes_from_there).
@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_the_rerun_ends_identically(
    tmp_path, reference):
  workdir = tmp_path / 'run'
  status, log = _run_and_signal(workdir, 'step 12/62 |', signal.SIGTERM)
  assert status == preemption.PREEMPTED_STATUS, log[-3000:]
  assert 'Traceback' not in log
  (line,) = [l for l in log.splitlines() if 'SIGTERM: saved step' in l]
  match = re.search(r'saved step (\d+) \(epoch 1/2, (\d+) of its 31 steps '
                    r'done\).* on disk ([\d.]+) s after the signal', line)
  assert match, line
  step, done, seconds = (int(match[1]), int(match[2]), float(match[3]))
  # The step in flight when the signal came, in the middle of epoch 1.
  assert 12 <= step < _STEPS_PER_EPOCH and done == step
  assert 0 < seconds < 60
  # That exact step is on disk, complete, and says where in the epoch.
  assert step in _steps_on_disk(workdir)
  _, meta = _final(workdir)
  assert (meta['step'], meta['epoch'], meta['epoch_step']) == (step, 0, step)
  assert not (workdir / 'results.json').exists()  # Not finished.

  status, log = _run(workdir)
  assert status == 0, log[-3000:]
  assert f'at step {step} (epoch 0, {step} steps into epoch 1)' in log
  _assert_same_run(workdir, reference)


# Four worker runs killed at chosen points: the slow tier (the SIGTERM
# resume above is the default run's kill-point test).
@pytest.mark.slow
def test_sigkill_anywhere_loses_only_the_work_since_the_last_checkpoint(
    tmp_path, reference):
  workdir = tmp_path / 'run'
  every_10 = {'checkpoint_every_steps': 10}
  kill_in_save = checkpoint_lib.KILL_DURING_SAVE_ENV

  # 1. Killed inside the asynchronous save of mid-epoch step 20.
  status, log = _run(workdir, every_10, **{kill_in_save: '20'})
  assert status == -signal.SIGKILL, log[-3000:]
  assert _steps_on_disk(workdir) == [10]
  assert any(name.startswith('20.orbax-checkpoint-tmp')
             for name in os.listdir(workdir / 'checkpoints'))

  # 2. Killed at an arbitrary moment after step 26: the resume skipped the
  # unfinished step 20, saying so, and went on from step 10.
  status, log = _run_and_signal(workdir, 'step 28/62 |', signal.SIGKILL,
                                every_10)
  assert status == -signal.SIGKILL, log[-3000:]
  warnings = [l for l in log.splitlines() if 'was being written' in l]
  assert len(warnings) == 1 and warnings[0].startswith('W')
  assert ('Checkpoint step 20 was being written when the run stopped'
          in warnings[0]) and 'resumed from step 10' in warnings[0]
  assert 'at step 10 (epoch 0, 10 steps into epoch 1)' in log
  assert [n for n in os.listdir(workdir / 'damaged_checkpoints')
          if n.startswith('20.orbax-checkpoint-tmp')]

  # 3. Killed inside the save at the end of epoch 1, after its test pass.
  status, log = _run(workdir, every_10, **{kill_in_save: '31'})
  assert status == -signal.SIGKILL, log[-3000:]
  assert 'epoch 1/2 | test' in log
  assert max(_steps_on_disk(workdir)) == 30

  status, log = _run(workdir, every_10)
  assert status == 0, log[-3000:]
  assert 'Checkpoint step 31 was being written' in log
  assert 'at step 30 (epoch 0, 30 steps into epoch 1)' in log
  _assert_same_run(workdir, reference)
  assert not [n for n in os.listdir(workdir / 'checkpoints')
              if 'tmp' in n]


def _config(pipeline='device', **overrides):
  # 500 digits in batches of 96: 5 steps per epoch.
  settings = dict(pipeline=pipeline, num_epochs=2, batch_size=96,
                  learning_rate_table=((1, 0.1), (2, 0.02)))
  settings.update(overrides)
  return tiny_config(**settings)


@pytest.mark.slow  # Mid-epoch saves and a resume: about 18 s.
def test_checkpoint_every_steps_saves_mid_epoch_and_resumes_from_there(
    tmp_path, one_device_mesh):
  """The loop's side (the tf.data source's: the test below)."""
  workdir = str(tmp_path)
  config = _config(checkpoint_every_steps=2, keep_checkpoints=10,
                   log_every_steps=3)
  train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  metas = {step: checkpoints.read_meta(step)
           for step in checkpoints.all_steps()}
  checkpoints.close()
  # Every 2 steps, and at each epoch's end (5 steps an epoch).
  assert {step: (m['epoch'], m['epoch_step']) for step, m in
          metas.items()} == {2: (0, 2), 4: (0, 4), 5: (1, 0), 6: (1, 1),
                             8: (1, 3), 10: (2, 0)}
  # Step 4's metric sums wait for the line at step 6.
  assert len(metas[4]['train_sums']) == 1 and not metas[10]['train_sums']
  expected, events = _final(workdir)[0], _events(workdir)

  # As if the run had died after its save of step 6 (1 step into epoch 2).
  for step in (8, 10):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
  train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  for a, b in zip(expected, _final(workdir)[0]):
    np.testing.assert_array_equal(a, b)
  assert _events(workdir) == events


def _batches(source, **kwargs):
  """Epoch 1 of `source` as numpy batches, built the way the step does."""
  materialize = jax.jit(source.materialize)
  return [jax.tree.map(np.asarray, materialize(source.resident, inputs))
          for inputs in source.epoch(1, **kwargs)]


@pytest.mark.parametrize('pipeline', ['device', 'tfdata'])
def test_an_epoch_from_a_start_step_is_the_tail_of_the_whole_epoch(
    pipeline, one_device_mesh):
  config = _config(pipeline)
  for train_split in (True, False):
    source = data_lib.make_source(
        config, 'train' if train_split else 'test', one_device_mesh,
        train=train_split)
    whole, tail = _batches(source), _batches(source, start_step=2)
    assert len(tail) == source.steps_per_epoch - 2 > 0
    for a, b in zip(whole[2:], tail):
      for key in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(a[key], b[key])
    assert not _batches(source, start_step=source.steps_per_epoch)


# Five runs in one workdir: the slow tier.
@pytest.mark.slow
def test_a_changed_config_is_refused_unless_allowed(tmp_path, one_device_mesh,
                                                    caplog):
  workdir, mesh = str(tmp_path), one_device_mesh
  train.train_and_evaluate(_config(num_epochs=1, learning_rate_table=(
      (1, 0.1),)), workdir, mesh=mesh)
  changed = _config(num_epochs=2, seed=1, momentum=0.5)
  with pytest.raises(InputError) as error:
    train.train_and_evaluate(changed, workdir, mesh=mesh)
  message = str(error.value)
  # Every difference, with both values; nothing else.
  assert 'seed: checkpoint 0, config 1' in message
  assert 'momentum: checkpoint 0.9, config 0.5' in message
  assert 'allow_config_change=True' in message
  assert 'learning_rate_table:' not in message and 'num_epochs:' not in message
  # A learning rate changed for a step already taken is a difference too.
  with pytest.raises(InputError, match=r'learning_rate_table: checkpoint '
                     r'\[\[1, 0.1\]\], config \[\[1, 0.2\]'):
    train.train_and_evaluate(_config(learning_rate_table=((1, 0.2), (2, 0.02))),
                             workdir, mesh=mesh)
  assert _final(workdir)[1]['epoch'] == 1  # Nothing was trained.

  # More epochs, and a table that gave the steps taken the same rates:
  # one consistent run, resumed without a question.
  train.train_and_evaluate(_config(num_epochs=2), workdir, mesh=mesh)
  assert _final(workdir)[1]['epoch'] == 2

  # Allowed: it trains, with a warning naming the differences.
  allowed = _config(num_epochs=3, seed=1, momentum=0.5,
                    allow_config_change=True)
  with caplog.at_level(logging.WARNING, logger='absl'):
    train.train_and_evaluate(allowed, workdir, mesh=mesh)
  warnings = [r.getMessage() for r in caplog.records
              if 'allow_config_change' in r.getMessage()]
  assert len(warnings) == 1 and 'seed: checkpoint 0, config 1' in warnings[0]
  assert _final(workdir)[1]['epoch'] == 3


def test_the_exit_status_is_distinct_and_no_traceback():
  """``Preempted`` ends the command like ``sys.exit``: not caught as an
  error by the driver (so no results.json), its own status."""
  assert issubclass(preemption.Preempted, SystemExit)
  assert not issubclass(preemption.Preempted, Exception)
  assert preemption.Preempted(7, 0, 1.0).code == 143
