"""What the command-line entry points share: flag parsing, quiet logs,
clean failures, Ctrl-C as one line."""

import contextlib
import gc
import logging as python_logging
import os
import re
import signal
import sys
import threading
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging

from rotnet_jax import config_schema
from rotnet_jax.errors import InputError
from rotnet_jax.errors import TrainingDiverged
from rotnet_jax.errors import first_line

_CONFIG_OVERRIDE = re.compile(r'^--config\.([\w.]+)(=|$)')


# Orbax's background threads log a full disk as several long tracebacks;
# the run reports it once, in one line (loop.check_disk_space before a
# save, train.train_and_evaluate if the disk fills up during one). Reading
# checkpoints read-only (to resume, or to restore a pretrained backbone)
# makes Orbax warn that it is read-only, which is the point.
_HIDDEN_MARKERS = ('No space left on device', 'RESOURCE_EXHAUSTED',
                   'read_only=True', 'Given directory is read only')


def _filter_library_logs(record) -> bool:
  """Hides Orbax's INFO lines, its tracebacks of a full disk and its
  read-only warnings."""
  if '/orbax/' not in record.pathname:
    return True
  if record.levelno < python_logging.WARNING:
    return False
  text = record.getMessage()
  if record.exc_info and record.exc_info[1] is not None:
    text += str(record.exc_info[1])
  return not any(marker in text for marker in _HIDDEN_MARKERS)


def _ignore_closed_event_loops(previous_hook):
  """A ``sys.unraisablehook`` that drops TensorStore's late callbacks.

  When Orbax gives up on a checkpoint it cannot read (or write), TensorStore
  still completes the pending reads afterwards and calls back into the
  event loop Orbax already closed: each callback prints a traceback of
  ``RuntimeError: Event loop is closed`` that says nothing the run's own
  message does not.
  """
  def hook(unraisable):
    if (unraisable.exc_type is RuntimeError and
        str(unraisable.exc_value) == 'Event loop is closed'):
      return
    previous_hook(unraisable)
  return hook


def quiet_library_logs() -> None:
  """Keeps Orbax's INFO lines and TensorStore's late tracebacks (see
  above) out of the console."""
  logging.get_absl_logger().addFilter(_filter_library_logs)
  sys.unraisablehook = _ignore_closed_event_loops(sys.unraisablehook)


# Exit status of a run whose loss became NaN or infinite.
DIVERGED_STATUS = 3


def fail(error, status: int = 2) -> None:
  """Exits with `status` and a one-line message (no traceback).

  Status 2 is bad input; :data:`DIVERGED_STATUS` a diverged run. A message
  that quotes another library's error over several lines is joined into
  one.
  """
  print('error: ' + ' '.join(str(error).split()), file=sys.stderr)
  sys.exit(status)


def run_or_fail(function, *args, **kwargs):
  """``function(*args, **kwargs)``, with bad input and a diverged run
  ended through :func:`fail` (status 2 and :data:`DIVERGED_STATUS`), and
  Ctrl-C through :func:`interrupted`."""
  try:
    return function(*args, **kwargs)
  except InputError as e:
    fail(e)
  except TrainingDiverged as e:
    # Jobs finished before it are kept; rerunning resumes after them.
    fail(e, status=DIVERGED_STATUS)
  except KeyboardInterrupt:
    interrupted()


# Exit status of a command stopped by Ctrl-C (SIGINT): 128 + 2, what a
# shell reports for a process that SIGINT ended. A training run stopped by
# Ctrl-C saves its step first and exits with the same status
# (training/preemption.py).
INTERRUPTED_STATUS = 128 + signal.SIGINT
_INTERRUPTED_LINE = 'interrupted'


def interrupted() -> NoReturn:
  """Ends the command after Ctrl-C: one line, :data:`INTERRUPTED_STATUS`.

  Nothing is left half-written under its final name: the commands write
  their files under a temporary name and rename them when complete, and
  Orbax does the same with a checkpoint (an unfinished one is set aside
  when the run resumes).
  """
  print(_INTERRUPTED_LINE, file=sys.stderr)
  sys.exit(INTERRUPTED_STATUS)


def _in_gc_callback(frame) -> bool:
  """Whether `frame` runs inside a garbage-collection callback."""
  callbacks = {getattr(c, '__code__', None) for c in gc.callbacks}
  while frame is not None:
    if frame.f_code in callbacks:
      return True
    frame = frame.f_back
  return False


def _on_sigint(signum, frame) -> None:
  """Ctrl-C outside a training loop (which installs its own handler).

  Raises KeyboardInterrupt, which :func:`one_line_interrupts` turns into
  one line. Python runs this handler at the main thread's next bytecode,
  which may be inside a garbage-collection callback (JAX registers one):
  an exception raised there is printed and dropped, and the command would
  go on. There the command ends at once instead, with the same line.
  """
  del signum
  if not _in_gc_callback(frame):
    raise KeyboardInterrupt
  os.write(2, (_INTERRUPTED_LINE + '\n').encode())
  os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access


@contextlib.contextmanager
def one_line_interrupts():
  """Ctrl-C inside ends the program with one line, no traceback.

  KeyboardInterrupt goes through :func:`interrupted`. In the main thread,
  SIGINT is handled by :func:`_on_sigint` while the body runs; a training
  loop replaces it with its own handler (save the step, then stop) and
  puts it back afterwards.
  """
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGINT, _on_sigint) if main_thread else None
  try:
    try:
      yield
    except KeyboardInterrupt:
      interrupted()
  except SystemExit as e:
    if main_thread and e.code == INTERRUPTED_STATUS:
      # Exiting on Ctrl-C (here, or after a training loop saved its step):
      # a further Ctrl-C while the program exits (exit handlers, threads
      # joined) ends it silently rather than with a traceback.
      previous = signal.SIG_DFL
    raise
  finally:
    if previous is not None:
      signal.signal(signal.SIGINT, previous)


def run(main) -> None:
  """Runs a command's `main` the way every command does: ``absl.app.run``
  with :func:`parse_flags`, Ctrl-C as one line (:func:`one_line_interrupts`).
  """
  with one_line_interrupts():
    app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line for ``absl.app.run(..., flags_parser=...)``.

  A bad flag value, a missing required flag, or a ``--config.KEY=...``
  override that ml_collections rejects (unknown key, wrong type) ends the
  program through :func:`fail` instead of a traceback.
  """
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      # The file is loaded on first access; a file that fails to load gives
      # a placeholder that raises its error on any attribute.
      flags.FLAGS.config.keys()
    return remaining
  except flags.Error as e:
    fail(e)
  except Exception as e:  # pylint: disable=broad-except
    # Loading the --config file or applying a --config.KEY override failed
    # (ml_collections raises plain Python errors): name what went wrong.
    known = config_schema.flatten(config_schema.defaults())
    for arg in argv[1:]:
      match = _CONFIG_OVERRIDE.match(arg)
      if match and match.group(1) not in known:
        fail(config_schema.unknown_key_error(match.group(1)))
    config_file = next((a.split('=', 1)[1] for a in argv[1:]
                        if a.startswith('--config=')), None)
    if isinstance(e, AttributeError) and 'get_config' in str(e):
      fail(f'--config={config_file}: the file has no get_config() function '
           '(see configs/quick.py for the shape of a config file)')
    if isinstance(e, OSError) and not os.path.isfile(config_file or ''):
      fail(f'--config={config_file}: no such file (pass a file of configs/, '
           'e.g. --config=configs/cifar.py)')
    if isinstance(e, (OSError, SyntaxError, ImportError)):
      fail(f'--config={config_file} cannot be loaded: {type(e).__name__}: '
           f'{first_line(e)}')
    fail(f'bad command line: {type(e).__name__}: {first_line(e)}')


def check_no_arguments(argv: list[str]) -> None:
  """Fails unless the command line had only flags (``argv[0]`` aside)."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}: every setting is a flag, e.g. '
         '--workdir=DIR or --config.num_epochs=10')
