"""``rotnet-proposals`` / ``python -m rotnet_jax.commands.proposals``:
selective search's region proposals of a VOC2007 detection split, for
Fast R-CNN.

    rotnet-proposals --dataset=~/VOCdevkit --split=trainval
    rotnet-proposals --dataset=~/VOCdevkit --split=all --jobs=8
    rotnet-proposals --dataset=~/VOCdevkit --split=test \
        --output=/tmp/test.npz --mode=quality

Writes ``<VOC2007>/proposals/selective_search_<mode>_<split>.npz`` beside
the data (or ``--output``), then prints where, the mean proposals per
image and the seconds per image. ``--split=all`` computes ``trainval``
and ``test``. An interrupted run (Ctrl-C) keeps its finished chunks; the
same command again goes on from there. A split whose file is already
there is checked and left alone (``--overwrite`` computes it again).
Needs OpenCV's contrib modules: ``pip install 'rotnet-jax[detection]'``.
The file and its checks: ``rotnet_jax.data.proposals``.
"""

from rotnet_jax.data import proposals
from rotnet_jax.errors import InputError


def _define_flags(flag_values=None):
  """Defines the command's flags in `flag_values` (default: absl's
  process-wide ``FLAGS``; tests pass a fresh ``FlagValues``)."""
  # Defined only when run as a command, not on import.
  from absl import flags  # pylint: disable=g-import-not-at-top
  into = dict(flag_values=flags.FLAGS if flag_values is None
              else flag_values)
  flags.DEFINE_string('dataset', None, 'A VOCdevkit folder (its VOC2007/) '
                      'or a VOC2007 folder.', **into)
  flags.DEFINE_string('split', 'trainval', 'trainval, test, train, val, or '
                      'all (trainval and test).', **into)
  flags.DEFINE_string('output', None, 'The .npz to write (default: '
                      '<VOC2007>/proposals/selective_search_<mode>_'
                      '<split>.npz). Not with --split=all.', **into)
  flags.DEFINE_enum('mode', 'fast', list(proposals.MODES), 'Selective '
                    'search\'s mode (OpenCV\'s fast or quality settings).',
                    **into)
  flags.DEFINE_integer('jobs', 0, 'Processes computing images at once (0: '
                       'one per CPU core).', lower_bound=0, **into)
  flags.DEFINE_bool('overwrite', False, 'Compute again and replace an '
                    'existing file.', **into)
  flags.mark_flags_as_required(['dataset'], **into)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  cli.check_no_arguments(argv)
  f = flags.FLAGS
  try:
    summaries = proposals.compute_splits(
        f.dataset, f.split, output=f.output, mode=f.mode, jobs=f.jobs,
        overwrite=f.overwrite)
  except InputError as e:
    cli.fail(e)
  for summary in summaries:
    if summary.get('cached'):
      print(f"already there: {summary['path']}: {summary['images']} images, "
            f"{summary['mean_proposals']:.0f} proposals per image (pass "
            '--overwrite to compute it again)')
      continue
    print(f"wrote {summary['path']}: {summary['images']} images, "
          f"{summary['mean_proposals']:.0f} proposals per image, "
          f"{summary['seconds_per_image']:.2f} s per image and process "
          f"({summary['computed']} computed now)")


def run() -> None:
  """The console-script entry point (``rotnet-proposals``)."""
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
