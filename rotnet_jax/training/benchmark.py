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

Each is timed with the network's 1x1 convolutions in each form of
``--conv1x1`` (default both, side by side): ``conv`` (``lax.conv``) and
``matmul`` (a product over channels, same parameters); the report says
which form runs use on this backend (``models.layers.conv1x1_form``) and
the matmul / conv ratio. The forms differ only where the network has 1x1
convolutions (the NIN and its ``conv_block`` heads, not AlexNet).

Synthetic images are used: the step's cost does not depend on pixel values.

``--input`` times the host input pipeline alone instead (no model):

    python -m rotnet_jax.benchmark --input \
        --config=configs/imagenet_rotnet_alexnet.py \
        --config.dataset=/data/jpegs --output=/tmp/input.json

the training pipeline of ``config.dataset`` (an image folder; the
ImageNet-style pipeline with ``augmentation='imagenet'``) as a run uses it,
batches landing on the devices, side by side with a bare tf.data loop over
the same files with the same parallelism that only reads, decodes a random
crop (``decode_and_crop_jpeg``) and resizes it to ``image_size`` -- the
least any such pipeline must do. Both read the same number of images
(``--input_examples``) in alternating rounds; the median round of each is
reported as images per second and per core, and as CPU milliseconds per
image (steadier on a shared machine), with the ratios project / bare.
"""

import os
import statistics
import time

import jax
import numpy as np

from rotnet_jax import parallel
from rotnet_jax.data import DeviceSource
from rotnet_jax.data import PIPELINES
from rotnet_jax.data import arrays
from rotnet_jax.data import detection_source
from rotnet_jax.data.source import HostBatches
from rotnet_jax.errors import InputError
from rotnet_jax.models import layers
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import steps as steps_lib
from rotnet_jax.training import validation


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
                  conv1x1_forms=layers.CONV1X1_FORMS,
                  num_classes: int = 10, mesh=None) -> dict:
  """Benchmarks the train step for each of `sources`; returns a JSON dict.

  The objective is the config's (the RotNet pretext task for
  ``configs/cifar.py``) with ``num_classes`` dataset classes, built once
  per form of ``conv1x1_forms`` (some of ``layers.CONV1X1_FORMS``); each
  source is timed with each form in turn, and has one entry in
  ``results`` (see :func:`_source_result`).
  """
  config = validation.check_config(config)
  unknown = [name for name in sources if name not in PIPELINES]
  if unknown or not sources or steps < 1 or warmup < 0:
    raise InputError(f'benchmark sources must be some of {PIPELINES} (got '
                     f'{list(sources)}), steps >= 1 (got {steps}) and '
                     f'warmup >= 0 (got {warmup})')
  if not conv1x1_forms or any(form not in layers.CONV1X1_FORMS
                              for form in conv1x1_forms):
    raise InputError(f'benchmark 1x1 convolution forms must be some of '
                     f'{layers.CONV1X1_FORMS} (got {list(conv1x1_forms)})')
  if examples < config.batch_size:
    raise InputError(f'--examples={examples} must be at least '
                     f'config.batch_size={config.batch_size} (one batch)')
  transfer = config.mode == 'transfer'
  if transfer and 'device' in sources:
    raise InputError(
        "a mode='transfer' config reads PASCAL VOC through its host "
        "pipeline only: benchmark it with --sources=tfdata (the step on "
        'batches already on the devices)')
  if transfer and config.pretrained == 'random':
    # No data here to re-estimate BatchNorm statistics on; the step's
    # cost does not depend on them.
    config.random_batch_stats = 'fresh'
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  if transfer and config.transfer_task == 'voc_detection':
    # The canvas of an image at the test scale (training draws smaller and
    # larger ones): 1,000 pixels at Fast R-CNN's 600.
    size = detection_source.canvas_side(config.test_scale,
                                        config.test_scale, config.max_size)
  elif transfer:
    size = config.transfer_image_size or config.image_size
  else:
    size = config.image_size
  rng = np.random.default_rng(0)
  by_form = {}
  for form in conv1x1_forms:
    # The form is fixed in the network's structure when it is built.
    with layers.conv1x1(form):
      by_form[form] = objectives.from_config(config, num_classes, mesh)
  objective = by_form[conv1x1_forms[0]]
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
      'mode': config.mode, 'transfer_task': (
          config.transfer_task if transfer else None), 'image_size': size,
      'warmup_steps': warmup, 'conv1x1_forms': list(conv1x1_forms),
      'conv1x1_default': layers.conv1x1_form(),
      'results': []}
  for name in sources:
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
          'mask': np.ones(config.batch_size, np.float32)}
      if transfer and config.transfer_task == 'voc_detection':
        batch.update(_regions(config, size, rng))
      else:
        batch['label'] = _labels(config, size, rng)
      local = jax.tree.map(
          lambda x: np.split(x, jax.process_count())[jax.process_index()],
          batch)
      inputs_list = [parallel.host_to_global(mesh, local)]
    timings = {}
    for form, objective in by_form.items():
      state = steps_lib.init_state(objective, tx, config.seed, mesh)
      compiled_steps = steps_lib.compile_steps(config, objective, tx, mesh,
                                               source, source)
      seconds, compile_seconds = _time_steps(compiled_steps, state,
                                             inputs_list, warmup, steps)
      timings[form] = {
          'compile_s': round(compile_seconds, 3),
          'ms_per_step': round(1000 * seconds / steps, 3),
          'images_per_sec': round(
              steps * report['rotated_batch_size'] / seconds, 1)}
    report['results'].append(_source_result(name, timings,
                                            report['conv1x1_default']))
  return report


def _labels(config, size: int, rng: np.random.Generator) -> np.ndarray:
  """Synthetic labels of a training batch, shaped as the objective reads
  them: a class per image, VOC's 20 targets (1, 0, -1) per image, or a
  VOC class per pixel."""
  if config.mode != 'transfer':
    return np.zeros(config.batch_size, np.int32)
  if config.transfer_task == 'voc_classification':
    return rng.integers(-1, 2, (config.batch_size, 20), dtype=np.int8)
  return rng.integers(0, 21, (config.batch_size, size, size), dtype=np.uint8)


def _regions(config, size: int, rng: np.random.Generator) -> dict:
  """Synthetic regions of a detection training batch: random boxes in the
  canvas, a quarter foreground (their labels and box targets drawn)."""
  shape = (config.batch_size, config.rois_per_image)
  corners = np.sort(rng.uniform(0, size - 1, shape + (2, 2)), axis=-2)
  labels = rng.integers(1, 21, shape).astype(np.int32)
  labels[:, round(config.foreground_fraction * shape[1]):] = 0
  # Sorted per coordinate: (x1, y1) then (x2, y2).
  return {'rois': corners.reshape(shape + (4,)).astype(np.float32),
          'roi_labels': labels,
          'roi_targets': rng.normal(0, 1, shape + (4,)).astype(np.float32),
          'roi_weights': np.ones(shape, np.float32)}


def _source_result(source: str, timings: dict, default_form: str) -> dict:
  """One source's entry of the report: its figures for each form.

  The top-level figures are those of the form runs here use, if timed
  (else of the first one timed), so that one row per source reads as
  before; ``matmul_to_conv`` compares the two forms' images per second.
  """
  form = default_form if default_form in timings else next(iter(timings))
  result = {'source': source, 'conv1x1': form, **timings[form],
            'conv1x1_forms': timings}
  if set(timings) == {'conv', 'matmul'}:
    result['matmul_to_conv'] = round(
        timings['matmul']['images_per_sec'] /
        timings['conv']['images_per_sec'], 3)
  return result


def _cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def _cpu_seconds() -> float:
  """User and system CPU seconds of this process so far."""
  times = os.times()
  return times.user + times.system


def _bare_loop(paths, image_size: int, batch_size: int, examples: int):
  """The bare tf.data loop: read, decode a random crop, resize, batch.

  Same parallelism as the project's pipeline (AUTOTUNE map, deterministic
  order, AUTOTUNE prefetch); no per-example seeds, flips, label or device
  transfer.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def jpeg(data):
    shape = tf.io.extract_jpeg_shape(data)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4]), area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.image.decode_and_crop_jpeg(data, window, channels=3)

  def load(path):
    data = tf.io.read_file(path)
    # The rare PNG named .JPEG (ImageNet has one) is decoded whole.
    crop = tf.cond(tf.io.is_jpeg(data), lambda: jpeg(data),
                   lambda: tf.io.decode_png(data, channels=3))
    return tf.cast(tf.image.resize(crop, [image_size, image_size]), tf.uint8)

  repeats = -(-examples // len(paths))
  ds = tf.data.Dataset.from_tensor_slices(paths).repeat(repeats).take(
      examples // batch_size * batch_size)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def run_input_benchmark(config, *, examples: int = 2048, rounds: int = 3,
                        mesh=None) -> dict:
  """Times the training input pipeline of ``config.dataset`` (an image
  folder) against the bare loop of :func:`_bare_loop`; returns a JSON dict.

  Raises:
    InputError: a bad config, or ``config.dataset`` is not an image folder.
  """
  from rotnet_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from rotnet_jax.data import tfdata_source  # pylint: disable=g-import-not-at-top
  config = validation.check_config(config)
  if datasets.dataset_kind(config.dataset) != 'folder':
    raise InputError(
        f'--input times an image folder: config.dataset={config.dataset!r} '
        'is not one (pass --config.dataset=/path/to/folder with '
        '<folder>/<train_split>/<class>/*.JPEG)')
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  split = datasets.open_split(config, config.train_split, train=True,
                              decoded=False)
  if examples < config.batch_size:
    raise InputError(f'--input_examples={examples} must be at least '
                     f'config.batch_size={config.batch_size} (one batch)')
  source = tfdata_source.TFDataSource(
      split, mesh=mesh, batch_size=config.batch_size, train=True,
      seed=config.seed, epoch_length=examples)
  timed = source.steps_per_epoch * config.batch_size

  def project(round_index):
    for batch in source.epoch(round_index):
      jax.block_until_ready(batch)

  def bare(round_index):
    del round_index
    iterator = iter(_bare_loop(split.paths, config.image_size,
                               config.batch_size, timed))
    for _ in range(source.steps_per_epoch):
      next(iterator)
    return iterator  # Its teardown: after the round's clock stops.

  # A round is timed from building its pipeline to its last batch. The
  # teardown of a finished tf.data iterator waited 0.25 to 1.3 s on a
  # loaded machine (CPU time hardly counts it): the project's epoch leaves
  # it to a thread after its last batch, and the bare loop's iterator is
  # released after the clock stops, so neither round counts it.
  loops = {'project': project, 'bare': bare}
  seconds = {name: [] for name in loops}
  cpu_seconds = {name: [] for name in loops}
  for name, loop in loops.items():  # Untimed: tf.data start-up, caches.
    loop(0)
  for round_index in range(1, rounds + 1):
    for name, loop in loops.items():
      start, cpu_start = time.perf_counter(), _cpu_seconds()
      unreleased = loop(round_index)
      seconds[name].append(time.perf_counter() - start)
      cpu_seconds[name].append(_cpu_seconds() - cpu_start)
      del unreleased
  cores = _cores()
  results = {}
  for name in loops:
    rate = timed / statistics.median(seconds[name])
    results[name] = {
        'images_per_sec': round(rate, 1),
        'images_per_sec_per_core': round(rate / cores, 1),
        # CPU time of this process per image: what the loop costs, even
        # on a machine shared with other work.
        'cpu_ms_per_image': round(
            1000 * statistics.median(cpu_seconds[name]) / timed, 3),
        'round_seconds': [round(s, 3) for s in seconds[name]]}
  return {
      'benchmark': 'input', 'dataset': config.dataset,
      'files': len(split.paths), 'augmentation': config.augmentation,
      'image_size': config.image_size, 'batch_size': config.batch_size,
      'images_per_round': timed, 'rounds': rounds, 'cores': cores,
      'backend': jax.default_backend(), 'num_devices': len(jax.devices()),
      'results': results,
      'project_to_bare_ratio': round(
          results['project']['images_per_sec'] /
          results['bare']['images_per_sec'], 3),
      'project_to_bare_cpu_ratio': round(
          results['bare']['cpu_ms_per_image'] /
          results['project']['cpu_ms_per_image'], 3)}
