"""``rotnet-extract`` / ``python -m rotnet_jax.extract``: features of a
split to ``.npz``.

    python -m rotnet_jax.extract --pretrained=/tmp/rotnet_cifar \
        --dataset=cifar10 --split=test --blocks=conv2 --pool --out=feats.npz

What the file holds: ``rotnet_jax.inference.extract``.
"""

from rotnet_jax.errors import InputError
from rotnet_jax.inference import extract


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('pretrained', None, 'A workdir, an exported '
                      '.safetensors file or an official PyTorch file.')
  flags.DEFINE_integer('step', 0, 'Checkpoint step of a workdir (0: the '
                       'latest).', lower_bound=0)
  flags.DEFINE_string('dataset', None, "'digits', an image folder or a TFDS "
                      'name.')
  flags.DEFINE_string('split', 'test', 'The split to read.')
  flags.DEFINE_list('blocks', ['conv2'], 'Blocks whose features are saved '
                    '(empty: every block).')
  flags.DEFINE_string('out', None, 'The .npz file to write.')
  flags.DEFINE_bool('pool', False, 'Global average pooling: [N, C] per '
                    'block instead of [N, h, w, C].')
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
