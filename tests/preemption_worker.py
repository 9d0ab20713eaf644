"""One training run of tests/test_preemption.py, in a process of its own
(so that it can be sent SIGTERM or SIGKILL).

Usage: python preemption_worker.py WORKDIR OVERRIDES_JSON

Trains ``helpers.tiny_config(**overrides)`` on one device, as the tests'
in-process reference runs do (same XLA flags, inherited from the test
session), so that their parameters can be compared bit for bit. Exits as
the command line would: 0 when done, ``preemption.PREEMPTED_STATUS`` after
a SIGTERM.
"""

import json
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
# This checkout's package and helpers, not whatever rotnet_jax is installed.
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from helpers import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from rotnet_jax.training import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
  # JSON has no tuples; the config's tuple keys want them.
  overrides = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
               if isinstance(v, list) else v for k, v in overrides.items()}
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  cli.quiet_library_logs()
  mesh = parallel.make_mesh(jax.devices()[:1])
  cli.run_or_fail(train.train_and_evaluate, tiny_config(**overrides),
                  workdir, mesh=mesh)


if __name__ == '__main__':
  main()
