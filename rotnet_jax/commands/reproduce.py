"""``rotnet-reproduce`` / ``python -m rotnet_jax.reproduce``: every job of
one of the paper's tables, in order, resumably.

    python -m rotnet_jax.reproduce table3 --root=/tmp/rotnet_repro
    python -m rotnet_jax.reproduce table3 --root=/tmp/quick --quick
    python -m rotnet_jax.reproduce table4 --root=/tmp/q --quick \
        --dataset=/data/imagenet_small
    python -m rotnet_jax.reproduce pascal --root=/data/rotnet \
        --voc_dataset=/data/VOCdevkit
    python -m rotnet_jax.reproduce pascal --root=/data/rotnet \
        --voc_dataset=/data/VOCdevkit \
        --proposals=/data/selective_search_data/voc_2007_{split}.mat

The tables and their jobs: ``rotnet_jax.experiments.reproduce``.
"""

import math
from absl import flags

from rotnet_jax.commands import cli
from rotnet_jax.experiments import reproduce


FLAGS = flags.FLAGS


def _all(parse, ok):
  def check(values):
    try:
      return all(ok(parse(v)) for v in values)
    except ValueError:
      return False
  return check


def _define_flags() -> None:
  """The command's flags; defined when it runs, not on import, so that
  importing this module (tests, notebooks, other commands) cannot clash
  with another command's flags of the same names."""
  flags.DEFINE_string('root', None, 'Folder for all runs of the table.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds; each gets its own set of runs.')
  flags.DEFINE_float('epochs_scale', 1.0,
                     'Multiplies every epoch count (schedules included).')
  flags.DEFINE_bool('quick', False, 'CPU-sized smoke run (see module doc).')
  flags.DEFINE_string('dataset', None,
                      'Override config.dataset (table6, pascal: of its '
                      'pretext run only; see --places_dataset, '
                      '--voc_dataset).')
  flags.DEFINE_string('places_dataset', None,
                      'table6: the Places probes\' dataset (default '
                      'places365_small; a Places205 image folder for the '
                      'paper\'s); with --quick, --dataset\'s.')
  flags.DEFINE_string('voc_dataset', None,
                      'pascal: the PASCAL VOC jobs\' dataset, a VOCdevkit '
                      'folder holding VOC2007/ and VOC2012/ (default: the '
                      'configs\', TFDS voc/2007 and ./VOCdevkit); needed '
                      'with --quick.')
  flags.DEFINE_string('proposals', None,
                      'pascal: the detection job\'s proposals files, a '
                      'path holding {split} (config.proposals: .npz of '
                      'rotnet-proposals or Fast R-CNN\'s .mat); default: '
                      'jobs compute them beside the data first.')
  flags.DEFINE_string('data_dir', None, 'Override config.data_dir.')
  flags.DEFINE_string('pipeline', None, 'Override config.pipeline.')
  flags.DEFINE_float('width', None, 'Override config.model.width.')
  flags.DEFINE_bool('half_precision', False,
                    'bfloat16 compute for every job (faster on GPU and TPU).')
  flags.DEFINE_list('ks', [str(k) for k in reproduce.DEFAULT_KS],
                    'Labelled images per class for the semi table.')
  flags.DEFINE_bool('dry_run', False, 'Print the jobs, run nothing.')
  flags.register_validator('seeds', _all(int, lambda s: 0 <= s < 2**31),
                           '--seeds must be integers >= 0, e.g. --seeds=0,1,2')
  flags.register_validator('ks', _all(int, lambda k: k > 0),
                           '--ks must be positive integers, e.g. --ks=20,100')
  flags.register_validator(
      'epochs_scale', lambda x: math.isfinite(x) and x > 0,
      '--epochs_scale must be a positive number (1 is the protocol)')
  flags.register_validator(
      'width', lambda x: x is None or (math.isfinite(x) and x > 0),
      '--width must be a positive number (1 is the paper\'s network)')


def main(argv):
  if len(argv) != 2 or argv[1] not in reproduce.TABLE_NAMES:
    cli.fail(f'give one table: python -m rotnet_jax.reproduce '
             f'{{{",".join(reproduce.TABLE_NAMES)}}} --root=DIR [--quick] '
             f'[--epochs_scale=F] (got {argv[1:]})')
  table = argv[1]
  overrides = {}
  if FLAGS.quick:
    overrides = cli.run_or_fail(reproduce.quick_overrides, table, FLAGS.dataset)
  elif FLAGS.dataset:
    overrides['dataset'] = FLAGS.dataset
  places_dataset = FLAGS.places_dataset
  # In a root of the old numbering table5 is still Places (see
  # rotnet_jax.experiments.reproduce).
  if places_dataset and not any(
      j.places for j in reproduce.table_jobs(table, root=FLAGS.root)):
    cli.fail(f'--places_dataset: {table} has no Places jobs (table6 has)')
  if FLAGS.voc_dataset and not any(
      j.voc for j in reproduce.table_jobs(table)):
    cli.fail(f'--voc_dataset: {table} has no PASCAL VOC jobs (pascal has)')
  if FLAGS.proposals and not any(
      j.proposals_split for j in reproduce.table_jobs(table)):
    cli.fail(f'--proposals: {table} has no detection job (pascal has)')
  if FLAGS.quick and not places_dataset and table in reproduce.ALEXNET_TABLES:
    places_dataset = FLAGS.dataset
  for key, value in (('data_dir', FLAGS.data_dir),
                     ('pipeline', FLAGS.pipeline),
                     ('model.width', FLAGS.width)):
    if value is not None:
      overrides[key] = value
  if FLAGS.half_precision:
    overrides['half_precision'] = True
  scale = (reproduce.QUICK_SCALE if FLAGS.quick and FLAGS.epochs_scale == 1.0
           else FLAGS.epochs_scale)
  ks = [int(k) for k in FLAGS.ks]
  if FLAGS.quick and overrides['dataset'] == reproduce.QUICK_DATASET:
    ks = [k for k in ks if k <= 100]  # Digits have ~150 images per class.
  cli.quiet_library_logs()
  cli.run_or_fail(reproduce.reproduce, table, FLAGS.root,
                  seeds=[int(s) for s in FLAGS.seeds], scale=scale,
                  overrides=overrides, ks=ks, places_dataset=places_dataset,
                  voc_dataset=FLAGS.voc_dataset, proposals=FLAGS.proposals,
                  quick=FLAGS.quick, dry_run=FLAGS.dry_run)


def run() -> None:
  """The console-script entry point (``rotnet-reproduce``)."""
  _define_flags()
  flags.mark_flags_as_required(['root'])
  cli.run(main)


if __name__ == '__main__':
  run()
