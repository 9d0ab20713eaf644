"""Times the compiled RotNet train step alone, data already on the devices.

    python -m rotnet_jax.benchmark --config=configs/cifar.py \
        --config.half_precision=True --output=/tmp/bench.json

For each input path it reports compile time, milliseconds per step and
rotated images per second (4 x batch_size per step), measured after warm-up
steps with the device synchronised:

* ``device``: the device-resident source: each step gathers its batch from
  a resident uint8 array, crops, flips, rotates and trains.
* ``tfdata``: the step the tf.data path runs: a uint8 batch that is already
  a global array on the devices is rotated and trained on (host decoding
  and transfer are not timed; TensorFlow is not needed).

Synthetic images are used: the step's cost does not depend on pixel values.
"""

import json
import os
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from rotnet_jax import cli
from rotnet_jax import objectives
from rotnet_jax import optim
from rotnet_jax import parallel
from rotnet_jax import run_files
from rotnet_jax import steps as steps_lib
from rotnet_jax import validation
from rotnet_jax.data import arrays
from rotnet_jax.data import DeviceSource
from rotnet_jax.data import PIPELINES
from rotnet_jax.data.source import HostBatches
from rotnet_jax.errors import InputError

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
  flags.DEFINE_string('output', None, 'Also write the results as JSON here.')
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                  lock_config=True)


def _time_steps(compiled_steps, state, inputs_list, warmup, steps):
  """Compiles, warms up and times the train step.

  Returns:
    ``(seconds of the timed steps, compile seconds)``.
  """
  constants = compiled_steps.constants
  start = time.perf_counter()
  compiled = compiled_steps.train_fn.lower(state, constants, inputs_list[0],
                                           0).compile()
  compile_seconds = time.perf_counter() - start
  for i in range(warmup):
    state, _ = compiled(state, constants, inputs_list[i % len(inputs_list)], i)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(steps):
    state, sums = compiled(state, constants,
                           inputs_list[i % len(inputs_list)], i)
  jax.block_until_ready((state, sums))
  return time.perf_counter() - start, compile_seconds


def run_benchmark(config, *, steps: int = 50, warmup: int = 5,
                  examples: int = 10_000, sources=PIPELINES,
                  num_classes: int = 10, mesh=None) -> dict:
  """Benchmarks the train step for each of `sources`; returns a JSON dict.

  The objective is the config's (the RotNet pretext task for
  ``configs/cifar.py``) with ``num_classes`` dataset classes.
  """
  config = validation.check_config(config)
  unknown = [name for name in sources if name not in PIPELINES]
  if unknown or not sources or steps < 1 or warmup < 0:
    raise InputError(f'benchmark sources must be some of {PIPELINES} (got '
                     f'{list(sources)}), steps >= 1 (got {steps}) and '
                     f'warmup >= 0 (got {warmup})')
  if examples < config.batch_size:
    raise InputError(f'--examples={examples} must be at least '
                     f'config.batch_size={config.batch_size} (one batch)')
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  size = config.image_size
  rng = np.random.default_rng(0)
  objective = objectives.from_config(config, num_classes, mesh)
  # Any epoch length: only the step's cost matters here.
  tx = optim.from_config(config, steps_per_epoch=100)
  devices = jax.devices()
  report = {
      'device_kind': devices[0].device_kind, 'backend': jax.default_backend(),
      'num_devices': len(devices), 'jax_version': jax.__version__,
      'batch_size': config.batch_size,
      'rotated_batch_size': config.batch_size * objective.inputs_per_image,
      'precision': 'bfloat16' if config.half_precision else 'float32',
      'model': objective.network['backbone'], 'timed_steps': steps,
      'warmup_steps': warmup,
      'results': []}
  for name in sources:
    state = steps_lib.init_state(objective, tx, config.seed, mesh)
    if name == 'device':
      data = arrays.SplitArrays(
          rng.integers(0, 256, (examples, size, size, 3), dtype=np.uint8),
          np.zeros(examples, np.int32), num_classes)
      source = DeviceSource(data, mesh=mesh, batch_size=config.batch_size,
                            train=True, seed=config.seed)
      inputs_list = list(source.epoch(0))
    else:
      source = HostBatches()  # What the tf.data path hands the step.
      batch = {
          'image': rng.integers(0, 256, (config.batch_size, size, size, 3),
                                dtype=np.uint8),
          'label': np.zeros(config.batch_size, np.int32),
          'mask': np.ones(config.batch_size, np.float32)}
      local = jax.tree.map(
          lambda x: np.split(x, jax.process_count())[jax.process_index()],
          batch)
      inputs_list = [parallel.host_to_global(mesh, local)]
    compiled_steps = steps_lib.compile_steps(config, objective, tx, mesh,
                                             source, source)
    seconds, compile_seconds = _time_steps(compiled_steps, state,
                                           inputs_list, warmup, steps)
    report['results'].append({
        'source': name, 'compile_s': round(compile_seconds, 3),
        'ms_per_step': round(1000 * seconds / steps, 3),
        'images_per_sec': round(
            steps * report['rotated_batch_size'] / seconds, 1)})
  return report


def main(argv):
  cli.check_no_arguments(argv)
  cli.quiet_library_logs()
  try:
    if FLAGS.output:
      if os.path.isdir(FLAGS.output):
        raise InputError(f'--output={FLAGS.output} is a folder: name a file '
                         'in it, e.g. --output=bench.json')
      run_files.check_writable_folder(
          os.path.dirname(os.path.abspath(FLAGS.output)), '--output folder')
    report = run_benchmark(FLAGS.config, steps=FLAGS.steps,
                           warmup=FLAGS.warmup, examples=FLAGS.examples,
                           sources=FLAGS.sources)
  except InputError as e:
    cli.fail(e)
  print(f"{report['device_kind']} x{report['num_devices']}, batch "
        f"{report['batch_size']} ({report['rotated_batch_size']} rotated), "
        f"{report['precision']}, model {report['model']}")
  for result in report['results']:
    print(f"  {result['source']:>7}: {result['images_per_sec']:>10,.0f} "
          f"rotated img/s  {result['ms_per_step']:8.2f} ms/step  "
          f"compile {result['compile_s']:.1f} s")
  text = json.dumps(report, indent=2)
  print(text)
  if FLAGS.output:
    run_files.write_json(os.path.abspath(FLAGS.output), report)


def run() -> None:
  """The console-script entry point (``rotnet-benchmark``)."""
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
