"""Stopping cleanly when the machine is about to be taken away, or on Ctrl-C.

Spot and preemptible TPU VMs, SLURM (preemption, ``scancel``, the end of a
time limit) and Kubernetes (eviction, node drain) send SIGTERM some seconds
before they kill a job; Ctrl-C in a terminal, and a notebook's interrupt
button, send SIGINT. ``loop.fit`` asks :meth:`Watcher.reached` after every
train step; once it answers True, the loop saves a checkpoint of that exact
step (mid-epoch), waits until it is on disk, logs one line naming the
signal and raises :class:`Preempted`, which ends the program with 128 + the
signal's number (:data:`PREEMPTED_STATUS`, :data:`INTERRUPTED_STATUS`).
Re-running the same command resumes from that step.

One process: our own handlers of SIGTERM and SIGINT set a flag, and the
run stops after the step in flight. Only a flag: Python runs a handler at
the main thread's next bytecode, which may be inside a garbage-collection
callback (JAX registers one); the KeyboardInterrupt of Python's default
SIGINT handler is printed and dropped there, and the run would train on.
A second SIGINT ends the program at once, without waiting for the save in
flight (a repeated SIGTERM changes nothing: a scheduler may send several).

Several processes (``jax.distributed``): each may get the signal at a
different step, or only some of them get it, yet all must save the same
step (an Orbax save is collective). JAX's preemption sync manager, started
by ``jax.distributed.initialize``, catches SIGTERM itself (in C++) and
tells every process; ``reached_preemption_sync_point(step)`` then answers
True on every process at the same step. So with several processes no
Python handler is installed: one for SIGTERM would replace JAX's, and one
for SIGINT could not tell the other processes (the sync point answers
SIGTERM only). SIGINT keeps the command line's behaviour there
(``commands/cli.py``): the process it reaches stops without a checkpoint
and prints ``interrupted``; the others wait for it in their next
collective, and JAX ends them all after its shutdown time-out (5 minutes
by default), with the coordination service's errors (an abort, status
134). The checkpoints already on disk stay restorable. Stop a
multi-process run with SIGTERM to keep its step.
"""

import os
import signal
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

# Exit statuses of a run stopped by a signal after saving its checkpoint:
# 128 + the signal's number, what a shell reports for a process that signal
# ended (143 for SIGTERM, 130 for SIGINT). Not 0 on purpose: the run is not
# finished, and whatever started it (a Kubernetes Job, a SLURM script,
# `rotnet_jax.reproduce` running its jobs in turn) must not take it for a
# completed one.
PREEMPTED_STATUS = 128 + signal.SIGTERM
INTERRUPTED_STATUS = 128 + signal.SIGINT


class Preempted(SystemExit):
  """The run stopped on SIGTERM or SIGINT, its checkpoint saved.

  A ``SystemExit``: the command ends with 128 + the signal's number
  (:data:`PREEMPTED_STATUS`, :data:`INTERRUPTED_STATUS`) and no traceback,
  ``train.train_and_evaluate`` writes no ``results.json``, and
  ``rotnet_jax.reproduce`` does not start its next job. Code that calls
  ``train.train_and_evaluate`` itself can catch it.

  Attributes:
    step: the optimiser step saved.
    epoch: epochs completed before it (the step is inside epoch ``epoch +
      1``, counting from 1).
    seconds: from the signal (or, with several processes, from the agreed
      step) to the checkpoint being on disk.
    signum: the signal that stopped the run.
  """

  def __init__(self, step: int, epoch: int, seconds: float,
               signum: int = signal.SIGTERM):
    super().__init__(128 + signum)
    self.step, self.epoch, self.seconds = step, epoch, seconds
    self.signum = signum


class Watcher:
  """Whether the run should save and stop now; a context manager.

  Install it (``with Watcher() as watcher:``) around the training loop and
  call :meth:`reached` after every step, with the same step on every
  process; once it answered True, call :meth:`saved` when the checkpoint
  is on disk.
  """

  def __init__(self):
    self._signalled_at = None  # time.monotonic() of the first signal.
    # The first signal; with several processes JAX's sync point, which
    # answers SIGTERM only.
    self._signum = signal.SIGTERM
    self._stop_step = None  # The step being saved, once reached() said so.
    self._saved = False
    self._previous_handlers = {}
    self._multiprocess = jax.process_count() > 1
    self._sync_point_works = True

  def __enter__(self):
    # signal.signal works only in the main thread; a run started from
    # another thread (rare: a notebook's background job) keeps the default
    # behaviour of both signals.
    if (not self._multiprocess and
        threading.current_thread() is threading.main_thread()):
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous_handlers[signum] = signal.signal(signum,
                                                        self._on_signal)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous_handlers.items():
      # None: a handler installed outside Python, which cannot be put back;
      # the default action is the nearest.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous_handlers = {}

  def _on_signal(self, signum, frame):
    del frame
    # Runs in the main thread between two bytecodes, possibly inside a
    # logging call or a garbage-collection callback: set the flag and
    # return; the loop logs.
    if self._signalled_at is None:
      self._signalled_at = time.monotonic()
      self._signum = signum
    elif signum == signal.SIGINT:
      # Ctrl-C again: the person will not wait for the save. os.write and
      # os._exit, as the main thread may be inside a write to stderr (a
      # second buffered write would fail) and an exception raised here
      # could be dropped like the KeyboardInterrupt above.
      os.write(2, (self._second_interrupt_message() + '\n').encode())
      os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access

  def _second_interrupt_message(self) -> str:
    """The one line of a second Ctrl-C, true at whatever moment it came."""
    resume = ('Rerun the same command to resume from the newest complete '
              'checkpoint (an unfinished save is set aside).')
    if self._stop_step is None:
      return ('interrupted again before the step in flight was saved: '
              f'stopped at once without saving it. {resume}')
    if self._saved:
      return (f'interrupted again after step {self._stop_step} was saved: '
              'stopped at once. Rerun the same command to resume from it.')
    return (f'interrupted again during the save of step {self._stop_step}: '
            f'stopped without waiting for it. {resume}')

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop. Call it after every step."""
    if not self._multiprocess:
      reached = self._signalled_at is not None
    else:
      reached = self._reached_sync_point(step)
    if reached:
      self._stop_step = step
    return reached

  def _reached_sync_point(self, step: int) -> bool:
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

  def saved(self) -> None:
    """Says that the checkpoint of the step :meth:`reached` stopped at is
    on disk (for the message of a later Ctrl-C)."""
    self._saved = True

  @property
  def signum(self) -> int:
    """The signal that stopped the run (SIGTERM if none came yet)."""
    return self._signum

  def signal_name(self) -> str:
    """``'SIGTERM'`` or ``'SIGINT'``: see :attr:`signum`."""
    return signal.Signals(self._signum).name

  def seconds(self) -> float:
    """Seconds since the signal (0 if there was none)."""
    if self._signalled_at is None:
      return 0.0
    return time.monotonic() - self._signalled_at
