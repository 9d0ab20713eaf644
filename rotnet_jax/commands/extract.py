"""``rotnet-extract`` / ``python -m rotnet_jax.extract``: features of a
split to ``.npz``.

    python -m rotnet_jax.extract --pretrained=/tmp/rotnet_cifar \
        --dataset=cifar10 --split=test --blocks=conv2 --pool --out=feats.npz
    python -m rotnet_jax.extract --pretrained=W --dataset=~/VOCdevkit \
        --split=trainval --blocks= --pool=svm --out=trainval.npz

What the file holds: ``rotnet_jax.inference.extract``.
"""

from rotnet_jax.errors import InputError
from rotnet_jax.inference import extract
from rotnet_jax.inference import model as model_lib


def pool_flag():
  """``--pool=none|global|svm``; as the boolean it was, ``--pool`` is
  ``global`` and ``--nopool`` ``none``."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  class PoolParser(flags.ArgumentParser):

    def parse(self, argument):
      if isinstance(argument, bool):
        return 'global' if argument else 'none'
      text = str(argument).strip().lower()
      if text in ('true', '1'):  # --pool alone.
        return 'global'
      if text in ('false', '0'):  # --nopool.
        return 'none'
      if text in model_lib.POOLS:
        return text
      raise ValueError(f'expected one of {", ".join(model_lib.POOLS)} '
                       '(--pool alone means global)')

    def flag_type(self):
      return 'string'

  return flags.Flag(
      PoolParser(), flags.ArgumentSerializer(), 'pool', 'none',
      'Pooling of each block: none ([N, h, w, C]), global (or --pool: '
      'global average, [N, C]) or svm (average pooling to about 9,216 '
      'values, [N, s, s, C], for python -m rotnet_jax.svm).', boolean=True)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('pretrained', None, 'A workdir, an exported '
                      '.safetensors file or an official PyTorch file.')
  flags.DEFINE_integer('step', 0, 'Checkpoint step of a workdir (0: the '
                       'latest).', lower_bound=0)
  flags.DEFINE_string('dataset', None, "'digits', an image folder, a TFDS "
                      'name, or PASCAL VOC (a VOCdevkit or VOC2007 folder, '
                      "or 'voc/2007') for the linear-SVM benchmark.")
  flags.DEFINE_string('split', 'test', 'The split to read (VOC: trainval or '
                      'test).')
  flags.DEFINE_list('blocks', ['conv2'], 'Blocks whose features are saved '
                    '(empty: every block).')
  flags.DEFINE_string('out', None, 'The .npz file to write.')
  flags.DEFINE_flag(pool_flag())
  flags.DEFINE_integer('batch_size', 256, 'Images per device program.',
                       lower_bound=1)
  flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
  flags.DEFINE_string('cache_dir', None, 'Decoded-image cache (default '
                      '~/.cache/rotnet_jax).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out.')
  flags.mark_flags_as_required(['pretrained', 'dataset', 'out'])


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  cli.check_no_arguments(argv)
  cli.quiet_library_logs()
  f = flags.FLAGS
  try:
    summary = extract.extract_split(
        pretrained=f.pretrained, dataset=f.dataset, split=f.split,
        blocks=[b for b in f.blocks if b], out=f.out, step=f.step,
        pool=f.pool, batch_size=f.batch_size, data_dir=f.data_dir,
        cache_dir=f.cache_dir, overwrite=f.overwrite)
  except InputError as e:
    cli.fail(e)
  shapes = ', '.join(f'{b} {s}' for b, s in summary['shapes'].items())
  print(f"{summary['out']}: {summary['images']} images ({shapes}) at "
        f"{summary['images_per_sec']:.0f} img/s")


def run() -> None:
  """The console-script entry point (``rotnet-extract``)."""
  from rotnet_jax.commands import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
