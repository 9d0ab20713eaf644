"""``rotnet-import-torch`` / ``python -m rotnet_jax.import_torch``: an
official PyTorch file as a workdir.

    python -m rotnet_jax.import_torch model_net_epoch200 \
        --workdir=/tmp/official_nin4
    python -m rotnet_jax.import_torch classifier_net_epoch100 \
        --backbone=model_net_epoch200 --workdir=/tmp/official_conv2 \
        [--block=conv2]

What is written: ``rotnet_jax.training.import_official``.
"""

from absl import flags

from rotnet_jax.commands import cli
from rotnet_jax.errors import InputError
from rotnet_jax.training import import_official


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags; defined when it runs, not on import, so that
  importing this module (tests, other commands) cannot clash with another
  command's flags of the same names."""
  flags.DEFINE_string('workdir', None, 'The workdir to write.')
  flags.DEFINE_string('backbone', None,
                      'For a classifier file: the backbone it was trained '
                      'on (an official file or a workdir).')
  flags.DEFINE_string('block', None,
                      'For a classifier file: the block it reads (default: '
                      'from its input shape; conv2 when several fit).')
  flags.DEFINE_integer('image_size', None,
                       'For an AlexNet file: the image size it was trained '
                       'on (default 224, or the smallest its fc layer '
                       'fits).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --workdir.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) != 2:
    cli.fail('pass one official FeatureLearningRotNet file: python -m '
             'rotnet_jax.import_torch FILE --workdir=OUT '
             f'(got {len(argv) - 1} arguments: {argv[1:]})')
  cli.quiet_library_logs()
  try:
    summary = import_official.import_file(
        argv[1], FLAGS.workdir, backbone=FLAGS.backbone, block=FLAGS.block,
        image_size=FLAGS.image_size, overwrite=FLAGS.overwrite)
  except InputError as e:
    cli.fail(e)
  print(summary)


def run() -> None:
  """The console-script entry point (``rotnet-import-torch``)."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
