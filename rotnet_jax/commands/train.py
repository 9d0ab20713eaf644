"""Runs a rotnet-jax experiment: the command behind ``main.py`` and
``rotnet-train``.

    python main.py --config=configs/cifar.py --workdir=/tmp/rotnet_cifar
    rotnet-train --config=configs/eval_multlayer.py --workdir=/tmp/eval \
        --config.pretrained=/tmp/rotnet_cifar

Any config key can be overridden, e.g. ``--config.num_epochs=10``.
Re-running the same command resumes from the workdir's latest checkpoint.
Bad input (a missing folder, an unknown key...) stops the run with a
one-line message and exit status 2, before any training step.
"""

import jax
from absl import flags
from absl import logging
from ml_collections import config_flags

from rotnet_jax import parallel
from rotnet_jax.commands import cli
from rotnet_jax.training import train


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags, defined when it runs, so that importing this
  module cannot clash with another command's flags."""
  flags.DEFINE_string('workdir', None,
                      'Output folder (checkpoints, config.json, '
                      'metrics.jsonl); an existing one is resumed.')
  flags.DEFINE_bool('distributed', False,
                    'Call jax.distributed.initialize() for a multi-host run. '
                    'Automatic when the environment names a coordinator '
                    '(JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, TPU pod).')
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.check_no_arguments(argv)
  cli.quiet_library_logs()
  if FLAGS.distributed or parallel.multihost_environment():
    # A coordinator that never answers ends in one message, not a hang.
    parallel.initialize_distributed()
  logging.info('JAX %s, process %d of %d, %d local / %d global devices: %s',
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  cli.run_or_fail(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


def run() -> None:
  """The console-script entry point (``rotnet-train``)."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
