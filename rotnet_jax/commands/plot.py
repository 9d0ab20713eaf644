"""Draws a run's training curves, or a reproduce root against the paper.

    python -m rotnet_jax.plot WORKDIR --out=DIR   # DIR/curves.png
    python -m rotnet_jax.plot ROOT --out=DIR      # DIR/paper_comparison.png
                                                  # (+ DIR/semi_supervised.png)

WORKDIR is a run's folder (it has ``metrics.jsonl``; a running job can be
plotted at any time). A PASCAL VOC detection run that has tested also gets
``detection_ap.png`` (its last test's AP per class) and ``detections.png``
(its detections and the ground truth on the first ``--detection_images``
test images, read from its dataset). ROOT a ``rotnet_jax.reproduce
--root`` (any folder with ``results.json`` files under it). ``--out``
defaults to the folder plotted. Prints the files written, one per line;
pictures of the same names are replaced. Bad input (a path that is
neither, an empty ``metrics.jsonl``, no finished run, an ``--out`` that
cannot be written): one ``error:`` line, exit status 2, nothing written.
See ``rotnet_jax.experiments.plots`` for what each picture shows.
"""

from absl import flags

from rotnet_jax.commands import cli
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import plots


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags; defined when it runs, not on import, so that
  importing this module (tests, other commands) cannot clash with another
  command's flags of the same name."""
  if 'out' not in FLAGS:  # run() may be called twice in one process.
    flags.DEFINE_string('out', None, 'Folder for the pictures (created if '
                        'need be; default: the folder plotted).')
  if 'detection_images' not in FLAGS:
    flags.DEFINE_integer('detection_images', plots.DETECTION_IMAGES,
                         'A detection run: the test images drawn with their '
                         'detections (the split file\'s first).',
                         lower_bound=1)


def main(argv) -> None:
  """Plots ``argv[1]`` into ``--out`` and prints the files written."""
  if len(argv) != 2:
    cli.fail('pass one folder, a run\'s workdir or a reproduce root: python '
             '-m rotnet_jax.plot PATH [--out=DIR] (got '
             f'{len(argv) - 1} arguments: {argv[1:]})')
  try:
    written = plots.plot_path(argv[1], FLAGS.out,
                              detection_images=FLAGS.detection_images)
  except InputError as e:
    cli.fail(e)
  except ImportError as e:
    if e.name != 'matplotlib':
      raise  # A bug of ours: its traceback.
    cli.fail(e)  # matplotlib is not installed: an install away.
  for path in written:
    print(path)


def run() -> None:
  """The ``rotnet-plot`` console script: flags, then :func:`main`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
