"""``rotnet-export`` / ``python -m rotnet_jax.export``: weights to one
safetensors file, or a backbone to an official-layout PyTorch file.

    python -m rotnet_jax.export WORKDIR OUT.safetensors [--step=0] [--overwrite]
    python -m rotnet_jax.export WORKDIR OUT.pth [--format=torch] [--step=0]

What is exported and how the format is chosen: ``rotnet_jax.weights.export``;
the files' layouts: ``rotnet_jax.weights.safetensors_format`` and
``rotnet_jax.weights.torch_format``.
"""

import time

from rotnet_jax.errors import InputError
from rotnet_jax.weights import export
from rotnet_jax.workdir import filesystem


def _define_flags():
  # Defined only when run as a command, not on import: a program that
  # imports this module keeps its own flags of the same names.
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_integer('step', 0, 'Checkpoint step of a workdir (0: the '
                       'latest).', lower_bound=0)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  flags.DEFINE_enum('format', None, list(export.FORMATS),
                    'The file to write: safetensors (everything, heads '
                    'included) or torch (a NIN or AlexNet backbone in the '
                    'official FeatureLearningRotNet layout). Default: told '
                    'by the name, .safetensors or .pth/.pt.')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_library_logs()
  if len(argv) != 3:
    cli.fail(f'expected two arguments, WORKDIR OUT.safetensors or OUT.pth '
             f'(got {argv[1:]}): python -m rotnet_jax.export WORKDIR '
             'OUT.safetensors|OUT.pth [--format=safetensors|torch] '
             '[--step=N] [--overwrite]')
  source, out = argv[1], argv[2]
  start = time.perf_counter()
  try:
    full = export.export(source, out, step=flags.FLAGS.step,
                         overwrite=flags.FLAGS.overwrite,
                         file_format=flags.FLAGS.format)
  except InputError as e:
    cli.fail(e)
  logging.info('Wrote %s (%.1f MB) in %.1f s', full,
               filesystem.resolve(full).stat().length / 1e6,
               time.perf_counter() - start)
  print(full)


def run() -> None:
  """The console-script entry point (``rotnet-export``)."""
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
