"""RotNet pretext training: model, train step and the loop, top to bottom.

One functional step, ``jax.jit``-compiled over a 1-D ``data`` mesh: the
batch arrives as a global uint8 array split over the devices (or is
gathered on device from a resident copy), is rotated four ways, normalised,
run through the NIN, and the SGD update is applied to replicated
parameters. The same code runs on 1 or N devices and on several hosts.
"""

import contextlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx
from flax import struct

from rotnet_jax import checkpoint as checkpoint_lib
from rotnet_jax import config_schema
from rotnet_jax import data as data_lib
from rotnet_jax import metrics as metrics_lib
from rotnet_jax import optim
from rotnet_jax import parallel
from rotnet_jax import rotation
from rotnet_jax.models import NIN

CONFIG_FILE = 'config.json'


@struct.dataclass
class TrainState:
  """Everything a train step updates. Plain nested dicts of arrays, so
  checkpoints do not depend on Flax's module classes."""
  params: Any
  batch_stats: Any
  opt_state: Any


def compute_dtype(config) -> jnp.dtype:
  return jnp.bfloat16 if config.half_precision else jnp.float32


def backbone_spec(config, num_classes: int) -> dict[str, Any]:
  """What it takes to rebuild the network; saved with every checkpoint."""
  return {'name': 'nin', 'num_classes': num_classes,
          'num_blocks': config.model.num_blocks, 'width': config.model.width,
          'image_size': config.image_size}


def build_model(spec: dict[str, Any], *, dtype=jnp.float32,
                rngs: nnx.Rngs) -> NIN:
  """The network described by :func:`backbone_spec`."""
  return NIN(spec['num_classes'], num_blocks=spec['num_blocks'],
             width=spec['width'], dtype=dtype, rngs=rngs)


def normalize(images: jax.Array, mean_rgb, std_rgb, dtype) -> jax.Array:
  """uint8 images to ``(x - mean) / std`` (statistics on the 0..255 scale)."""
  mean = jnp.asarray(mean_rgb, jnp.float32)
  std = jnp.asarray(std_rgb, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def create_train_state(config, spec, tx: optax.GradientTransformation,
                       mesh) -> tuple[nnx.GraphDef, TrainState]:
  """Initialises the model and optimiser, replicated over `mesh`.

  Returns:
    ``(graphdef, state)``: the model's static structure and its arrays.
  """
  dtype = compute_dtype(config)

  def init():
    model = build_model(spec, dtype=dtype, rngs=nnx.Rngs(config.seed))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params = nnx.to_pure_dict(params)
    return TrainState(params, nnx.to_pure_dict(batch_stats), tx.init(params))

  graphdef = nnx.graphdef(
      nnx.eval_shape(lambda: build_model(spec, dtype=dtype,
                                         rngs=nnx.Rngs(0))))
  # Initialising under jit with a replicated output makes every host
  # compute the same values in place, without a host-to-device copy.
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
  return graphdef, state


def _weighted_sums(logits, labels, losses, weights) -> dict[str, jax.Array]:
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {'loss_sum': jnp.sum(losses * weights),
          'correct': jnp.sum(correct * weights),
          'count': jnp.sum(weights)}


def train_step(state: TrainState, batch, *, graphdef, tx, mean_rgb, std_rgb,
               dtype) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on the four rotations of every image of `batch`.

  Args:
    state: parameters, BatchNorm statistics and optimiser state.
    batch: ``{'image': uint8 [B, H, W, 3], 'mask': f32 [B], ...}``; the
      mask weights each image's four rotations in the loss.

  Returns:
    The new state and the batch's weighted metric sums.
  """
  images, labels = rotation.rotate_batch(batch['image'])
  weights = rotation.repeat_per_rotation(batch['mask'])
  inputs = normalize(images, mean_rgb, std_rgb, dtype)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.batch_stats)
    logits, _ = model(inputs, train=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return loss, (logits, losses, new_stats)

  grads, (logits, losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(params, batch_stats, opt_state)
  return new_state, _weighted_sums(logits, labels, losses, weights)


def eval_step(state: TrainState, batch, *, graphdef, mean_rgb, std_rgb,
              dtype) -> dict[str, jax.Array]:
  """Rotation loss and accuracy of a batch, BatchNorm in inference mode."""
  images, labels = rotation.rotate_batch(batch['image'])
  weights = rotation.repeat_per_rotation(batch['mask'])
  model = nnx.merge(graphdef, state.params, state.batch_stats)
  logits, _ = model(normalize(images, mean_rgb, std_rgb, dtype), train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _weighted_sums(logits, labels, losses, weights)


def _step_constants(config, graphdef) -> dict[str, Any]:
  return dict(graphdef=graphdef, mean_rgb=tuple(config.mean_rgb),
              std_rgb=tuple(config.std_rgb), dtype=compute_dtype(config))


def jit_train_step(config, graphdef, tx, mesh, source):
  """``(state, resident, inputs) -> (state, sums)``, compiled for `source`.

  The source's ``materialize`` runs inside the compiled step, so the
  device-resident source's gather and augmentation fuse with the step. The
  state is donated: its buffers are reused for the new state.
  """
  constants = _step_constants(config, graphdef)

  def step(state, resident, inputs):
    batch = source.materialize(resident, inputs)
    return train_step(state, batch, tx=tx, **constants)

  return jax.jit(step, donate_argnums=0,
                 out_shardings=parallel.replicated(mesh))


def jit_eval_step(config, graphdef, mesh, source):
  """``(state, resident, inputs) -> sums``, compiled for `source`."""
  constants = _step_constants(config, graphdef)

  def step(state, resident, inputs):
    return eval_step(state, source.materialize(resident, inputs), **constants)

  return jax.jit(step, out_shardings=parallel.replicated(mesh))


def _needs_sync_every_step(mesh) -> bool:
  # Several fake CPU devices in one process can deadlock XLA when multiple
  # collective programs are in flight (DESIGN.md section 5). Waiting for
  # each step costs nothing measurable on CPU; GPUs and TPUs keep running
  # ahead.
  return jax.default_backend() == 'cpu' and mesh.devices.size > 1


def evaluate(eval_fn, state, source, sync: bool) -> dict[str, float]:
  """Weighted loss and accuracy over one pass of `source`."""
  sums = []
  for inputs in source.epoch(0):
    sums.append(eval_fn(state, source.resident, inputs))
    if sync:
      jax.block_until_ready(sums[-1])
  return metrics_lib.summarize(sums)


def _check_same_network(checkpoints, step: int, spec: dict[str, Any]):
  """Refuses to resume a checkpoint of a different network."""
  saved = checkpoints.read_meta(step).get('backbone', {})
  differ = {k: (saved.get(k), v) for k, v in spec.items()
            if k in saved and saved[k] != v}
  if differ:
    details = ', '.join(f'{k}: checkpoint {a!r} vs config {b!r}'
                        for k, (a, b) in differ.items())
    raise ValueError(
        f'{checkpoints.directory} holds checkpoints of a different network '
        f'({details}). Use a new --workdir, or the same model settings to '
        'resume.')


class _Progress:
  """Training speed between log lines and the time left, evaluations excluded."""

  def __init__(self, step: int, total_steps: int):
    self._total_steps = total_steps
    self._last_step = step
    self._last_time = time.time()
    self._seconds_per_step = None

  def update(self, step: int, images_per_step: int) -> tuple[float, str]:
    """Returns images/s since the last update and the estimated time left."""
    now = time.time()
    steps = step - self._last_step
    seconds = max(now - self._last_time, 1e-9)
    self._seconds_per_step = seconds / steps
    self._last_step, self._last_time = step, now
    eta = metrics_lib.format_duration(self._seconds_per_step *
                                      (self._total_steps - step))
    return steps * images_per_step / seconds, eta

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside (evaluation) counts as neither training nor ETA."""
    start = time.time()
    yield
    self._last_time += time.time() - start


def _write_config(workdir: str, config, spec) -> None:
  if jax.process_index() != 0:
    return
  resolved = json.loads(config.to_json_best_effort())
  resolved['backbone'] = spec
  with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
    json.dump(resolved, f, indent=2, sort_keys=True)


def train_and_evaluate(config, workdir: str, *, mesh=None) -> TrainState:
  """Trains the RotNet described by `config`, resuming from `workdir`.

  Args:
    config: a config built on ``config_schema.defaults()``.
    workdir: output folder: ``checkpoints/``, ``config.json``,
      ``metrics.jsonl``, ``tensorboard/``. Re-running with the same workdir
      resumes from its latest checkpoint.
    mesh: the data mesh (default: every device of every process).

  Returns:
    The final train state (metrics are in ``WORKDIR/metrics.jsonl``).
  """
  # Everything that can fail on bad input runs before any checkpoint is
  # touched: config, mesh and batch size, both data sources, workdir model.
  config_schema.validate(config)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  train_source = data_lib.make_source(config, config.train_split, mesh,
                                      train=True)
  test_source = data_lib.make_source(config, config.test_split, mesh,
                                     train=False)
  spec = backbone_spec(config, rotation.NUM_ROTATIONS)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpoint_lib.Checkpointer(
      workdir, max_to_keep=config.keep_checkpoints)
  latest = checkpoints.latest_step()
  if latest is not None:
    _check_same_network(checkpoints, latest, spec)
  _write_config(workdir, config, spec)

  steps_per_epoch = train_source.steps_per_epoch
  schedule = optim.epoch_table_schedule(config.learning_rate_table,
                                        steps_per_epoch)
  tx = optim.sgd(schedule, momentum=config.momentum,
                 nesterov=config.nesterov, weight_decay=config.weight_decay)
  graphdef, state = create_train_state(config, spec, tx, mesh)
  train_fn = jit_train_step(config, graphdef, tx, mesh, train_source)
  eval_fn = jit_eval_step(config, graphdef, mesh, test_source)

  start_epoch, step = 0, 0
  if latest is not None:
    restored = checkpoints.restore(latest, model={
        'params': state.params, 'batch_stats': state.batch_stats},
                                   opt_state=state.opt_state)
    state = TrainState(restored['model']['params'],
                       restored['model']['batch_stats'],
                       restored['opt_state'])
    start_epoch, step = restored['meta']['epoch'], restored['meta']['step']
    logging.info('Resumed from %s at step %d (epoch %d).',
                 checkpoints.directory, step, start_epoch)

  writer = metrics_lib.MetricWriter(workdir)
  sync = _needs_sync_every_step(mesh)
  rotated_per_step = config.batch_size * rotation.NUM_ROTATIONS
  total_steps = config.num_epochs * steps_per_epoch
  logging.info('Training %d epochs x %d steps of %d images (%d rotated), '
               'pipeline=%s, %d examples.', config.num_epochs,
               steps_per_epoch, config.batch_size, rotated_per_step,
               config.pipeline, train_source.num_examples)
  progress = _Progress(step, total_steps)
  pending = []
  for epoch in range(start_epoch, config.num_epochs):
    for inputs in train_source.epoch(epoch):
      state, sums = train_fn(state, train_source.resident, inputs)
      if sync:
        jax.block_until_ready(sums)
      pending.append(sums)
      step += 1
      if step % config.log_every_steps == 0:
        summary = metrics_lib.summarize(pending)
        speed, eta = progress.update(step, rotated_per_step)
        writer.write(step=step, epoch=step / steps_per_epoch, split='train',
                     loss=summary['loss'], accuracy=summary['accuracy'],
                     images_per_sec=speed,
                     learning_rate=float(schedule(step - 1)))
        logging.info(
            'epoch %d/%d step %d/%d | train loss %.4f rotation acc %.2f%% | '
            '%.0f img/s | ETA %s', epoch + 1, config.num_epochs, step,
            total_steps, summary['loss'], 100 * summary['accuracy'], speed,
            eta)
        pending = []

    done = epoch + 1
    last = done == config.num_epochs
    if done % config.eval_every_epochs == 0 or last:
      with progress.paused():
        eval_start = time.time()
        summary = evaluate(eval_fn, state, test_source, sync)
        speed = (summary['count'] / (time.time() - eval_start))
      writer.write(step=step, epoch=done, split='test', loss=summary['loss'],
                   accuracy=summary['accuracy'], images_per_sec=speed)
      logging.info('epoch %d/%d | test loss %.4f rotation acc %.2f%% '
                   '(%d rotated images)', done, config.num_epochs,
                   summary['loss'], 100 * summary['accuracy'],
                   summary['count'])
    if done % config.checkpoint_every_epochs == 0 or last:
      checkpoints.save(step, model={'params': state.params,
                                    'batch_stats': state.batch_stats},
                       opt_state=state.opt_state,
                       meta={'epoch': done, 'step': step, 'backbone': spec})

  if start_epoch >= config.num_epochs:
    logging.info('Nothing to train: %s already holds epoch %d of %d.',
                 workdir, start_epoch, config.num_epochs)
  checkpoints.close()
  writer.close()
  return state
