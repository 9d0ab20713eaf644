"""``rotnet-benchmark`` / ``python -m rotnet_jax.benchmark``: train-step
and input-pipeline throughput.

    python -m rotnet_jax.benchmark --config=configs/cifar.py \
        --config.half_precision=True --output=/tmp/bench.json
    python -m rotnet_jax.benchmark --input \
        --config=configs/imagenet_rotnet_alexnet.py \
        --config.dataset=/data/jpegs --output=/tmp/input.json

What is timed: ``rotnet_jax.training.benchmark``.
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from rotnet_jax.commands import cli
from rotnet_jax.data import PIPELINES
from rotnet_jax.errors import InputError
from rotnet_jax.models import layers
from rotnet_jax.training import benchmark
from rotnet_jax.workdir import filesystem


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags, defined when it runs (see reproduce.py)."""
  flags.DEFINE_integer('steps', 50, 'Timed steps per source.', lower_bound=1)
  flags.DEFINE_integer('warmup', 5, 'Untimed steps after compilation.',
                       lower_bound=0)
  flags.DEFINE_integer('examples', 10_000,
                       'Resident synthetic images for the device source.',
                       lower_bound=1)
  flags.DEFINE_list('sources', list(PIPELINES), f'Any of {PIPELINES}.')
  flags.register_validator(
      'sources',
      lambda names: bool(names) and all(n in PIPELINES for n in names),
      f'--sources must list one or more of {PIPELINES}')
  flags.DEFINE_enum('conv1x1', 'both', ('both',) + layers.CONV1X1_FORMS,
                    'How the network\'s 1x1 convolutions are computed in '
                    'the timed steps: lax.conv, a matmul over channels, or '
                    'both side by side.')
  flags.DEFINE_string('output', None, 'Also write the results as JSON here.')
  flags.DEFINE_bool('input', False,
                    'Time the host input pipeline of config.dataset (an '
                    'image folder) against a bare tf.data decode-and-crop '
                    'loop, instead of the train step.')
  flags.DEFINE_integer('input_examples', 2048,
                       '--input: images read per timed round.',
                       lower_bound=1)
  flags.DEFINE_integer('input_rounds', 3,
                       '--input: timed rounds of each loop (alternating).',
                       lower_bound=1)
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                  lock_config=True)


def main(argv):
  cli.check_no_arguments(argv)
  cli.quiet_library_logs()
  try:
    if FLAGS.output:
      if os.path.isdir(FLAGS.output):
        raise InputError(f'--output={FLAGS.output} is a folder: name a file '
                         'in it, e.g. --output=bench.json')
      filesystem.check_writable_folder(
          os.path.dirname(os.path.abspath(FLAGS.output)), '--output folder')
    if FLAGS.input:
      report = benchmark.run_input_benchmark(FLAGS.config,
                                   examples=FLAGS.input_examples,
                                   rounds=FLAGS.input_rounds)
    else:
      forms = (layers.CONV1X1_FORMS if FLAGS.conv1x1 == 'both' else
               (FLAGS.conv1x1,))
      report = benchmark.run_benchmark(FLAGS.config, steps=FLAGS.steps,
                             warmup=FLAGS.warmup, examples=FLAGS.examples,
                             sources=FLAGS.sources, conv1x1_forms=forms)
  except InputError as e:
    cli.fail(e)
  if FLAGS.input:
    for name, result in report['results'].items():
      print(f"  {name:>7}: {result['images_per_sec']:>8,.0f} img/s  "
            f"{result['images_per_sec_per_core']:>7,.0f} img/s/core")
    print(f"  project / bare: {report['project_to_bare_ratio']:.2f} "
          f"(CPU time per image: {report['project_to_bare_cpu_ratio']:.2f}; "
          f"{report['cores']} cores, {report['files']} files)")
    _write(report)
    return
  print(f"{report['device_kind']} x{report['num_devices']}, batch "
        f"{report['batch_size']} ({report['rotated_batch_size']} rotated), "
        f"{report['precision']}, model {report['model']}")
  for result in report['results']:
    for form, timing in result['conv1x1_forms'].items():
      print(f"  {result['source']:>7} 1x1 {form:>6}: "
            f"{timing['images_per_sec']:>10,.0f} rotated img/s  "
            f"{timing['ms_per_step']:8.2f} ms/step  "
            f"compile {timing['compile_s']:.1f} s")
    if 'matmul_to_conv' in result:
      print(f"  {result['source']:>7} 1x1 matmul / conv: "
            f"{result['matmul_to_conv']:.2f}x")
  print(f"  runs on {report['backend']} compute 1x1 convolutions as "
        f"{report['conv1x1_default']}")
  _write(report)


def _write(report: dict) -> None:
  """Prints `report` as JSON, and writes it to ``--output`` if given."""
  print(json.dumps(report, indent=2))
  if FLAGS.output:
    filesystem.write_json(os.path.abspath(FLAGS.output), report)


def run() -> None:
  """The console-script entry point (``rotnet-benchmark``)."""
  _define_flags()
  flags.mark_flags_as_required(['config'])
  cli.run(main)


if __name__ == '__main__':
  run()
