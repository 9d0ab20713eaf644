"""SIGTERM to one of two processes through jax.distributed.

The promise under test: with several processes, JAX's preemption sync
point makes every process save the same step even if only one got the
signal; all of them exit with status 143, and rerunning them resumes from
that step and ends with the parameters of a run never stopped. Real
processes (``interrupt_worker.py``, one CPU device each, started as
``test_multihost.py`` starts its workers) sent a real signal.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT
from rotnet_jax.training import preemption
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from test_interrupt import _lines_with
from test_multihost import _free_port
from test_multihost import _load
from test_preemption import _RUN
from test_preemption import _STEPS_PER_EPOCH
from test_preemption import _events

_WORKER = os.path.join(REPO_ROOT, 'tests', 'interrupt_worker.py')


def _start_both(workdir):
  """Processes 0 and 1 of one run of `_RUN` in `workdir`; a run that ends
  writes each process's final variables to ``WORKDIR.<process>.npz``."""
  port = str(_free_port())
  return [subprocess.Popen(
      [sys.executable, _WORKER, str(workdir), json.dumps(_RUN), str(i), port],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env=dict(os.environ, PYTHONUNBUFFERED='1',
                          ROTNET_TEST_FINAL_NPZ=f'{workdir}.{i}.npz'))
          for i in (0, 1)]


def _run_both(workdir, signal_when=None):
  """Runs both processes to their end; with `signal_when`, sends SIGTERM to
  process 1 alone once a line of process 0 contains it.

  Returns:
    Per process, ``(exit status, output)``.
  """
  processes = _start_both(workdir)
  seen = []
  if signal_when:
    for line in processes[0].stdout:
      seen.append(line)
      if signal_when in line:
        processes[1].send_signal(signal.SIGTERM)
        break
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  outputs[0] = ''.join(seen) + outputs[0]
  if signal_when:
    assert signal_when in outputs[0], outputs[0][-3000:]
  return [(p.returncode, output) for p, output in zip(processes, outputs)]


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path):
  reference = tmp_path / 'reference'
  for status, output in _run_both(reference):
    assert status == 0, output[-3000:]

  workdir = tmp_path / 'run'
  steps = []
  for status, output in _run_both(workdir, 'step 12/62 |'):
    assert status == preemption.PREEMPTED_STATUS, output[-3000:]
    assert 'Traceback' not in output
    (line,) = _lines_with(output, 'SIGTERM: saved step')
    steps.append(int(line.split('saved step ')[1].split()[0]))
  # One step, agreed by both, in the middle of epoch 1; it is on disk.
  assert steps[0] == steps[1] and 12 <= steps[0] < _STEPS_PER_EPOCH, steps
  step = steps[0]
  meta = _meta(workdir)
  assert (meta['step'], meta['epoch'], meta['epoch_step']) == (step, 0, step)

  for status, output in _run_both(workdir):
    assert status == 0, output[-3000:]
    assert f'at step {step} (epoch 0, {step} steps into epoch 1)' in output
  meta, expected = _meta(workdir), _meta(reference)
  assert expected['step'] == 2 * _STEPS_PER_EPOCH
  for key in ('epoch', 'epoch_step', 'step', 'best', 'train_sums'):
    assert meta[key] == expected[key], key
  for i in (0, 1):  # Bit for bit.
    for a, b in zip(_load(f'{workdir}.{i}.npz'), _load(f'{reference}.0.npz'),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  assert _events(workdir) == _events(reference)


def _meta(workdir):
  """The ``meta`` item of the newest checkpoint (no arrays: those of two
  processes cannot be restored here)."""
  checkpoints = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
  try:
    return checkpoints.read_meta(checkpoints.latest_step())
  finally:
    checkpoints.close()
