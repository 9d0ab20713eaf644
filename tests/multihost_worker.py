"""One process of a 2-process CPU run, started by test_multihost.py.

Usage: python multihost_worker.py PROCESS_ID PORT WORKDIR PIPELINE OUT_NPZ
"""

import os
import sys

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ['XLA_FLAGS'] = ''

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_TESTS = os.path.dirname(os.path.abspath(__file__))
# This checkout's package and helpers, not whatever rotnet_jax is installed.
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]
from helpers import MULTIHOST_OVERRIDES, tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  process_id, port, workdir, pipeline, out = sys.argv[1:]
  jax.distributed.initialize(f'localhost:{port}', num_processes=2,
                             process_id=int(process_id))
  assert jax.process_count() == 2 and jax.device_count() == 2
  config = tiny_config(pipeline=pipeline, **MULTIHOST_OVERRIDES)
  state = train.train_and_evaluate(config, workdir)
  leaves = jax.tree.leaves(state.params)
  # Parameters are replicated: this process holds a full copy.
  np.savez(out, *[np.asarray(x.addressable_data(0)) for x in leaves])
  jax.distributed.shutdown()


if __name__ == '__main__':
  main()
