"""A CPU training run in its own process, started by test_multihost.py.

Usage: python multihost_worker.py ROLE PORT WORKDIR OVERRIDES OUT_NPZ

ROLE ``0`` or ``1``: that process of a 2-process run through
jax.distributed (coordinator on localhost:PORT), one CPU device each.
ROLE ``local2``: one process on a mesh of 2 CPU devices (PORT unused).
The reference run is a process of its own because XLA's CPU results
depend on how many devices the process has: a 2-device mesh in a process
of 8 fake devices (the test session's) differs from one in a process of
2 devices by about 5% after 5 float32 steps (measured).

OVERRIDES is a JSON object of config keys over ``tiny_config()``; with
``"float64": true`` the process runs with 64-bit JAX. Writes the final
``(params, batch_stats)`` leaves to OUT_NPZ.
"""

import json
import os
import sys

_ROLE, _PORT, _WORKDIR, _OVERRIDES, _OUT = sys.argv[1:]
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=2'
                           if _ROLE == 'local2' else '')
# Read when JAX is imported: the whole process runs in 64 bits.
os.environ['JAX_ENABLE_X64'] = str(
    int(json.loads(_OVERRIDES).get('float64', False)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_TESTS = os.path.dirname(os.path.abspath(__file__))
# This checkout's package and helpers, not whatever rotnet_jax is installed.
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]
from helpers import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax.training import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  if _ROLE != 'local2':
    parallel.initialize_distributed(f'localhost:{_PORT}', 2, int(_ROLE),
                                    timeout_s=120)
  assert jax.device_count() == 2
  assert jax.process_count() == (1 if _ROLE == 'local2' else 2)
  config = tiny_config(**json.loads(_OVERRIDES))
  state = train.train_and_evaluate(config, _WORKDIR)
  leaves = jax.tree.leaves((state.params, state.batch_stats))
  # The variables are replicated: this process holds a full copy.
  np.savez(_OUT, *[np.asarray(x.addressable_data(0)) for x in leaves])
  if _ROLE != 'local2':
    jax.distributed.shutdown()


if __name__ == '__main__':
  main()
