"""``rotnet-svm`` / ``python -m rotnet_jax.svm``: the linear-SVM benchmark of
Goyal et al. (ICCV 2019) on PASCAL VOC07 features.

    python -m rotnet_jax.svm --train=trainval.npz --test=test.npz \
        [--blocks=conv1,conv2] [--low_shot] [--jobs=0] --out=svm.json
    python -m rotnet_jax.svm --config=configs/voc07_svm_low_shot.py \
        --train=trainval.npz --test=test.npz --out=svm.json

``--config`` names a ``configs/voc07_svm*.py`` file: its settings replace
the flags' defaults, and a flag given on the command line wins over both.
The two files come from ``python -m rotnet_jax.extract`` on VOC07's
``trainval`` and ``test`` splits (``--pool=svm``). Prints each block's test
mAP (the RotNet paper's form and the VOC2007 devkit's 11-point form) and
writes every number to ``--out``. The protocol, and what differs from their
code: ``rotnet_jax.training.svm``.
"""

import os

from rotnet_jax.errors import InputError
from rotnet_jax.training import svm
from rotnet_jax.workdir import filesystem


def _define_flags():
  # Defined only when run as a command, not on import.
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('train', None, 'Features of VOC07 trainval (.npz of '
                      'python -m rotnet_jax.extract).')
  flags.DEFINE_string('test', None, 'Features of VOC07 test, of the same '
                      'blocks.')
  flags.DEFINE_list('blocks', [], 'Blocks to benchmark (empty: every block '
                    'of --train).')
  flags.DEFINE_bool('low_shot', False, 'Also the low-shot benchmark (k = '
                    '--shots positives per class, --samples samples each; '
                    '26 x more SVMs).')
  flags.DEFINE_list('shots', [str(k) for k in svm.SHOTS], 'Low-shot '
                    'positives per class.')
  flags.DEFINE_integer('samples', svm.SAMPLES, 'Low-shot samples per k.',
                       lower_bound=1)
  flags.DEFINE_list('costs', [repr(c) for c in svm.COSTS], 'SVM costs '
                    'cross-validated (default: the paper\'s 10^[-7,2] and '
                    '2^[-19,-4]).')
  flags.DEFINE_integer('folds', svm.FOLDS, 'Cross-validation folds.',
                       lower_bound=2)
  flags.DEFINE_integer('jobs', 0, 'Processes fitting classes at once (0: '
                       'one per CPU core).', lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'Low-shot samples and liblinear\'s '
                       'coordinate order.')
  flags.DEFINE_string('out', None, 'The .json file to write.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out.')
  flags.mark_flags_as_required(['train', 'test', 'out'])
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      'config', None, 'A configs/voc07_svm*.py file: its settings are the '
      'defaults of the flags above (a flag given wins).')


# The flags a --config file sets the defaults of (its keys).
_SETTINGS = ('blocks', 'low_shot', 'costs', 'folds', 'shots', 'samples',
             'seed')


def settings_from_flags(f) -> dict:
  """The benchmark's settings: each flag given on the command line, else
  the ``--config`` file's value, else the flag's default.

  Raises:
    InputError: a ``--config`` file that is not a linear-SVM config, or
      one with invalid settings.
  """
  values = {name: f[name].value for name in _SETTINGS}
  if f.config is not None:
    svm.check_settings(f.config)
    for name in _SETTINGS:
      if not f[name].present:
        values[name] = f.config[name]
  values['blocks'] = [b for b in values['blocks'] if b]
  values['costs'] = _numbers(values['costs'], float, 'costs')
  values['shots'] = _numbers(values['shots'], int, 'shots')
  return values


def _numbers(values, kind, flag: str):
  try:
    return [kind(v) for v in values if v != '']
  except ValueError as e:
    raise InputError(f'--{flag}={",".join(values)}: expected a list of '
                     f'{kind.__name__} values') from e


def _percent(value) -> str:
  return '   n/a' if value is None else f'{100 * value:6.2f}'


def _print_table(results: dict) -> None:
  blocks = results['blocks']
  print(f"{'block':<10} {'mAP':>6} {'11-pt':>6}   (test %, VOC07 "
        'linear SVMs)')
  for block, entry in blocks.items():
    full = entry['full']
    print(f'{block:<10} {_percent(full["mAP"])} '
          f'{_percent(full["mAP_11point"])}')
  low_shot = {block: entry['low_shot']['shots']
              for block, entry in blocks.items() if 'low_shot' in entry}
  if not low_shot:
    return
  print('low-shot mAP (test %, mean +- std over samples; cost chosen on '
        'test, as theirs)')
  shots = next(iter(low_shot.values()))
  print(f"{'block':<10} " + ' '.join(f'{"k=" + k:>14}' for k in shots))
  for block, by_k in low_shot.items():
    cells = [f"{_percent(v['mAP']['mean'])} +- "
             f"{_percent(v['mAP']['std']).strip():>5}"
             for v in by_k.values()]
    print(f'{block:<10} ' + ' '.join(f'{c:>14}' for c in cells))


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  cli.check_no_arguments(argv)
  cli.quiet_library_logs()
  f = flags.FLAGS
  try:
    results = svm.benchmark_files(
        f.train, f.test, **settings_from_flags(f),
        jobs=f.jobs or len(os.sched_getaffinity(0)), out=f.out,
        overwrite=f.overwrite)
  except InputError as e:
    cli.fail(e)
  _print_table(results)
  print(f'wrote {filesystem.absolute(f.out)}')


def run() -> None:
  """The console-script entry point (``rotnet-svm``)."""
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
