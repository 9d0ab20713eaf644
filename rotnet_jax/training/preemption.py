"""Stopping cleanly when the machine is about to be taken away.

Spot and preemptible TPU VMs, SLURM (preemption, ``scancel``, the end of a
time limit) and Kubernetes (eviction, node drain) send SIGTERM some seconds
before they kill a job. ``loop.fit`` asks :meth:`Watcher.reached` after every
train step; once it answers True, the loop saves a checkpoint of that exact
step (mid-epoch), waits until it is on disk, logs one line and raises
:class:`Preempted`, which ends the program with :data:`PREEMPTED_STATUS`.
Re-running the same command resumes from that step.

One process: our own SIGTERM handler sets a flag, and the run stops after
the step in flight. Several processes (``jax.distributed``): each may get
the signal at a different step, or only some of them get it, yet all must
save the same step (an Orbax save is collective). JAX's preemption sync
manager, started by ``jax.distributed.initialize``, catches SIGTERM itself
(in C++) and tells every process; ``reached_preemption_sync_point(step)``
then answers True on every process at the same step. So with several
processes no Python handler is installed: it would replace JAX's.
"""

import signal
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

# Exit status of a run stopped by SIGTERM after saving its checkpoint: 128 +
# 15, what a shell reports for a process that SIGTERM ended. Not 0 on
# purpose: the run is not finished, and whatever started it (a Kubernetes
# Job, a SLURM script, `rotnet_jax.reproduce` running its jobs in turn)
# must not take it for a completed one.
PREEMPTED_STATUS = 128 + signal.SIGTERM


class Preempted(SystemExit):
  """The run stopped on SIGTERM, its checkpoint saved.

  A ``SystemExit``: the command ends with :data:`PREEMPTED_STATUS` and no
  traceback, ``train.train_and_evaluate`` writes no ``results.json``, and
  ``rotnet_jax.reproduce`` does not start its next job. Code that calls
  ``train.train_and_evaluate`` itself can catch it.

  Attributes:
    step: the optimiser step saved.
    epoch: epochs completed before it (the step is inside epoch ``epoch +
      1``, counting from 1).
    seconds: from the signal (or, with several processes, from the agreed
      step) to the checkpoint being on disk.
  """

  def __init__(self, step: int, epoch: int, seconds: float):
    super().__init__(PREEMPTED_STATUS)
    self.step, self.epoch, self.seconds = step, epoch, seconds


class Watcher:
  """Whether the run should save and stop now; a context manager.

  Install it (``with Watcher() as watcher:``) around the training loop and
  call :meth:`reached` after every step, with the same step on every
  process.
  """

  def __init__(self):
    self._signalled_at = None  # time.monotonic() of the first SIGTERM.
    self._previous_handler = None
    self._multiprocess = jax.process_count() > 1
    self._sync_point_works = True

  def __enter__(self):
    # signal.signal works only in the main thread; a run started from
    # another thread (rare: a notebook's background job) keeps the default
    # SIGTERM behaviour.
    if (not self._multiprocess and
        threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    # Runs in the main thread between two bytecodes, possibly inside a
    # logging call: only set the flag; the loop logs.
    if self._signalled_at is None:
      self._signalled_at = time.monotonic()

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop. Call it after every step."""
    if not self._multiprocess:
      return self._signalled_at is not None
    if not self._sync_point_works:
      return False
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:
      # The preemption service is off (jax_enable_preemption_service):
      # SIGTERM keeps its default action, ending the run unsaved.
      self._sync_point_works = False
      logging.warning('No checkpoint on SIGTERM in this run: JAX\'s '
                      'preemption service is unavailable (%s).', e)
      return False
    if reached and self._signalled_at is None:
      self._signalled_at = time.monotonic()
    return reached

  def seconds(self) -> float:
    """Seconds since the signal (0 if there was none)."""
    if self._signalled_at is None:
      return 0.0
    return time.monotonic() - self._signalled_at
