"""One training run of tests/test_interrupt.py and
tests/test_multihost_preemption.py, in a process of its own (so that it can
be sent SIGINT or SIGTERM).

Usage:
  python interrupt_worker.py WORKDIR OVERRIDES_JSON
  python interrupt_worker.py WORKDIR OVERRIDES_JSON PROCESS_ID PORT

The first form trains ``helpers.tiny_config(**overrides)`` on one device,
as ``preemption_worker.py`` does (same XLA flags, inherited from the test
session), so that its parameters equal that worker's bit for bit. The
second runs process PROCESS_ID (0 or 1) of a two-process run through
``jax.distributed`` (coordinator on localhost:PORT), one CPU device each,
as ``multihost_worker.py`` does. Both end as the command line does
(``cli.one_line_interrupts``, ``cli.run_or_fail``): 0 when done, 143 after
a SIGTERM, 130 after Ctrl-C.

Test hooks, in the environment: with ``ROTNET_TEST_SLOW_SAVES_AFTER=N``,
the save of every step after N takes a minute in Orbax's background
writer, after its temporary folder exists, and a line ``slow save of step
S`` says when it starts: time enough to send a second signal during the
save. With ``ROTNET_TEST_FINAL_NPZ=PATH``, a run that ends writes its
final ``(params, batch_stats)`` leaves to PATH (a checkpoint of two
processes cannot be restored in a process with other devices).
"""

import json
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
_WORKDIR, _OVERRIDES, *_PROCESS = sys.argv[1:]
if _PROCESS:
  # Read when JAX starts: one CPU device per process.
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ['XLA_FLAGS'] = ''
# This checkout's package and helpers, not whatever rotnet_jax is installed.
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]

# pylint: disable=g-import-not-at-top,wrong-import-position
import asyncio

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from helpers import tiny_config
from rotnet_jax import parallel
from rotnet_jax.commands import cli
from rotnet_jax.training import train
# pylint: enable=g-import-not-at-top,wrong-import-position

SLOW_SAVES_ENV = 'ROTNET_TEST_SLOW_SAVES_AFTER'
FINAL_NPZ_ENV = 'ROTNET_TEST_FINAL_NPZ'


def _slow_down_saves(after: int) -> None:
  """Makes the ``meta`` item of every save after step `after` take a
  minute (see the module doc)."""
  # pylint: disable=protected-access
  save = ocp.JsonCheckpointHandler._save_fn

  async def slow_save(self, x, directory):
    if int(x.get('step', 0)) > after:
      print(f"slow save of step {x['step']}", flush=True)
      await asyncio.sleep(60)
    await save(self, x, directory)

  ocp.JsonCheckpointHandler._save_fn = slow_save


def main():
  # JSON has no tuples; the config's tuple keys want them.
  overrides = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
               if isinstance(v, list) else v
               for k, v in json.loads(_OVERRIDES).items()}
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  cli.quiet_library_logs()
  if os.environ.get(SLOW_SAVES_ENV):
    _slow_down_saves(int(os.environ[SLOW_SAVES_ENV]))
  if _PROCESS:
    process_id, port = (int(x) for x in _PROCESS)
    parallel.initialize_distributed(f'localhost:{port}', 2, process_id,
                                    timeout_s=120)
  mesh = parallel.make_mesh(None if _PROCESS else jax.devices()[:1])
  # With two processes, JAX's exit handler shuts jax.distributed down.
  state = cli.run_or_fail(train.train_and_evaluate, tiny_config(**overrides),
                          _WORKDIR, mesh=mesh)
  if os.environ.get(FINAL_NPZ_ENV):
    leaves = jax.tree.leaves((state.params, state.batch_stats))
    # Replicated: this process holds a full copy.
    np.savez(os.environ[FINAL_NPZ_ENV],
             *[np.asarray(x.addressable_data(0)) for x in leaves])


if __name__ == '__main__':
  with cli.one_line_interrupts():
    main()
