"""The epoch loop shared by pretext, supervised and evaluation runs.

Reads top to bottom: resume from the latest checkpoint, then for every
epoch run the compiled train step over the source, log, evaluate, save.
What is trained is decided by the caller, which passes the initial state and
two compiled steps:

* ``train_fn(state, constants, inputs, step) -> (state, sums)``
* ``eval_fn(state, constants, inputs) -> sums``

where ``sums`` maps each head's name (``rotation``, ``classifier``,
``conv2``...) to its weighted ``loss_sum``/``correct``/``count``, and
``constants`` holds what the steps read but never change (the
device-resident dataset, a frozen backbone).
"""

import contextlib
import json
import os
import time
from typing import Any

import jax
from absl import logging
from flax import struct

from rotnet_jax import checkpoint as checkpoint_lib
from rotnet_jax import metrics as metrics_lib
from rotnet_jax.errors import InputError

CONFIG_FILE = 'config.json'
RESULTS_FILE = 'results.json'

# Config keys that change what a resumed run computes. Changing one of them
# between runs in the same workdir is allowed (e.g. a longer schedule) but
# logged as a warning, since the result is no longer one consistent run.
TRAJECTORY_KEYS = (
    'dataset', 'batch_size', 'seed', 'learning_rate_table', 'momentum',
    'nesterov', 'weight_decay', 'num_train_examples', 'examples_per_class',
    'epoch_examples', 'half_precision', 'rotations', 'rotation_mode',
    'pipeline')


@struct.dataclass
class TrainState:
  """Everything a train step updates, as plain nested dicts of arrays (so
  checkpoints do not depend on Flax's module classes)."""
  params: Any
  batch_stats: Any
  opt_state: Any


def needs_sync_every_step(mesh) -> bool:
  """Whether to wait for each step (several fake CPU devices only).

  Several CPU devices in one process can deadlock XLA when multiple
  collective programs are in flight (DESIGN.md section 5). Waiting costs
  nothing measurable on CPU; GPUs and TPUs keep running ahead.
  """
  return jax.default_backend() == 'cpu' and mesh.devices.size > 1


def evaluate(eval_fn, state, constants, source, sync: bool
             ) -> dict[str, dict[str, float]]:
  """Per-head weighted loss and accuracy over one pass of `source`."""
  per_step = []
  for inputs in source.epoch(0):  # Evaluation order is fixed: epoch 0.
    per_step.append(eval_fn(state, constants, inputs))
    if sync:
      jax.block_until_ready(per_step[-1])
  return {head: metrics_lib.summarize([sums[head] for sums in per_step])
          for head in per_step[0]} if per_step else {}


class _Progress:
  """Speed between log lines and the time left, evaluation excluded."""

  def __init__(self, step: int, total_steps: int):
    self._total_steps = total_steps
    self._last_step = step
    self._last_time = time.time()

  def update(self, step: int, images_per_step: int) -> tuple[float, str]:
    """Returns images/s since the last update and the estimated time left."""
    now = time.time()
    seconds = max(now - self._last_time, 1e-9)
    steps = step - self._last_step
    self._last_step, self._last_time = step, now
    eta = metrics_lib.format_duration(seconds / steps *
                                      (self._total_steps - step))
    return steps * images_per_step / seconds, eta

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside counts as neither training nor ETA."""
    start = time.time()
    yield
    self._last_time += time.time() - start


def _describe(summaries: dict[str, dict[str, float]]) -> str:
  if len(summaries) == 1:
    (summary,) = summaries.values()
    return f"loss {summary['loss']:.4f} acc {100 * summary['accuracy']:.2f}%"
  return ', '.join(f"{head} loss {s['loss']:.3f} acc {100 * s['accuracy']:.2f}%"
                   for head, s in summaries.items())


def _check_resumable(meta: dict[str, Any], network: dict[str, Any],
                     config_dict: dict[str, Any], directory: str) -> None:
  """Errors on a different network; warns on a changed trajectory."""
  saved = meta.get('network', {})
  if saved != network:
    keys = sorted(set(saved) | set(network))
    details = '; '.join(f'{k}: checkpoint {saved.get(k)!r} vs config '
                        f'{network.get(k)!r}' for k in keys
                        if saved.get(k) != network.get(k))
    raise InputError(
        f'{directory} holds checkpoints of a different network ({details}). '
        'Use a new --workdir, or the same settings to resume.')
  saved_config = meta.get('config', {})
  changed = [k for k in TRAJECTORY_KEYS
             if k in saved_config and saved_config[k] != config_dict.get(k)]
  for key in changed:
    logging.warning('Resuming with %s=%r, but the checkpoints were trained '
                    'with %r.', key, config_dict.get(key), saved_config[key])


def _track_best(record, summary, epoch: int) -> dict[str, Any]:
  """Final and best-so-far test accuracy of one head, after an evaluation."""
  record = dict(record or {'best_accuracy': -1.0, 'best_epoch': 0})
  if summary['accuracy'] > record['best_accuracy']:
    record.update(best_accuracy=summary['accuracy'], best_epoch=epoch)
  record.update(final_accuracy=summary['accuracy'], final_epoch=epoch,
                count=summary['count'])
  return record


def write_config(workdir: str, config, extra: dict[str, Any]) -> dict:
  """Writes ``WORKDIR/config.json``: the resolved config plus `extra`."""
  resolved = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      json.dump(dict(resolved, **extra), f, indent=2, sort_keys=True)
  return resolved


def fit(config, workdir: str, *, network: dict[str, Any], state: TrainState,
        train_fn, eval_fn, constants, train_source, test_source, mesh,
        images_per_step: int, extra_results: dict[str, Any] | None = None
        ) -> TrainState:
  """Trains `state` for ``config.num_epochs``, resuming from `workdir`.

  Args:
    config: the run config (schedule, logging and checkpoint intervals).
    workdir: where checkpoints, metrics and results go.
    network: JSON description of what is trained (backbone spec, heads);
      saved with every checkpoint, and a resumed run must match it.
    state: the freshly initialised state (its shapes and shardings are the
      restore target when resuming).
    train_fn, eval_fn, constants: see the module docstring.
    train_source, test_source: data sources.
    mesh: the data mesh.
    images_per_step: images a train step consumes (for images/s).
    extra_results: merged into every head's entry of ``results.json``.

  Returns:
    The final state.
  """
  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpoint_lib.Checkpointer(
      workdir, max_to_keep=config.keep_checkpoints)
  config_dict = json.loads(config.to_json_best_effort())
  start_epoch, step, best = 0, 0, {}
  latest = checkpoints.latest_step()
  if latest is not None:
    _check_resumable(checkpoints.read_meta(latest), network, config_dict,
                     checkpoints.directory)
    restored = checkpoints.restore(latest, model={
        'params': state.params, 'batch_stats': state.batch_stats},
                                   opt_state=state.opt_state)
    state = TrainState(restored['model']['params'],
                       restored['model']['batch_stats'],
                       restored['opt_state'])
    meta = restored['meta']
    start_epoch, step, best = meta['epoch'], meta['step'], meta['best']
    logging.info('Resumed from %s at step %d (epoch %d).',
                 checkpoints.directory, step, start_epoch)
  write_config(workdir, config, {'network': network})

  steps_per_epoch = train_source.steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch
  sync = needs_sync_every_step(mesh)
  # Events after the checkpoint we resume from are dropped: they are redone.
  writer = metrics_lib.MetricWriter(workdir, keep_up_to_step=step)
  progress = _Progress(step, total_steps)
  logging.info('Training %d epochs x %d steps of %d images (%d per step '
               'after the task), pipeline=%s, %d examples.',
               config.num_epochs, steps_per_epoch, config.batch_size,
               images_per_step, config.pipeline, train_source.num_examples)
  pending = []

  def log_train(epoch):
    nonlocal pending
    summaries = {head: metrics_lib.summarize([s[head] for s in pending])
                 for head in pending[0]}
    speed, eta = progress.update(step, images_per_step)
    for head, summary in summaries.items():
      writer.write(step=step, epoch=step / steps_per_epoch, split='train',
                   head=head, loss=summary['loss'],
                   accuracy=summary['accuracy'], images_per_sec=speed)
    logging.info('epoch %d/%d step %d/%d | train %s | %.0f img/s | ETA %s',
                 epoch + 1, config.num_epochs, step, total_steps,
                 _describe(summaries), speed, eta)
    pending = []

  try:
    for epoch in range(start_epoch, config.num_epochs):
      for inputs in train_source.epoch(epoch):
        state, sums = train_fn(state, constants, inputs, step)
        if sync:
          jax.block_until_ready(sums)
        pending.append(sums)
        step += 1
        if step % config.log_every_steps == 0:
          log_train(epoch)
      done = epoch + 1
      last = done == config.num_epochs
      if last and pending:
        log_train(epoch)  # The tail of the last epoch.
      if done % config.eval_every_epochs == 0 or last:
        with progress.paused():
          start = time.time()
          summaries = evaluate(eval_fn, state, constants, test_source, sync)
          seconds = time.time() - start
        for head, summary in summaries.items():
          writer.write(step=step, epoch=done, split='test', head=head,
                       loss=summary['loss'], accuracy=summary['accuracy'],
                       images_per_sec=summary['count'] / seconds)
          best[head] = _track_best(best.get(head), summary, done)
        logging.info('epoch %d/%d | test %s (%d test samples)', done,
                     config.num_epochs, _describe(summaries),
                     next(iter(summaries.values()))['count'])
      if done % config.checkpoint_every_epochs == 0 or last:
        checkpoints.save(step, model={'params': state.params,
                                      'batch_stats': state.batch_stats},
                         opt_state=state.opt_state,
                         meta={'epoch': done, 'step': step,
                               'network': network, 'config': config_dict,
                               'best': best})
    if start_epoch >= config.num_epochs:
      logging.info('Nothing to train: %s already holds epoch %d of %d.',
                   workdir, start_epoch, config.num_epochs)
  finally:
    # Also on errors: finish the asynchronous save in flight.
    checkpoints.close()
    writer.close()
  if best:
    write_results(workdir, config, best, extra_results or {},
                  num_epochs=config.num_epochs)
  return state


def write_results(workdir, config, best, extra, *, num_epochs):
  """Writes ``WORKDIR/results.json``: one entry per head.

  ``best_test_accuracy`` is selected on the test set (as the official code
  did); ``final_test_accuracy`` is the honest number.
  """
  if jax.process_index() != 0:
    return
  heads = []
  for head, record in best.items():
    heads.append(dict({
        'head': head,
        'final_test_accuracy': record['final_accuracy'],
        'final_epoch': record['final_epoch'],
        'best_test_accuracy_test_selected': record['best_accuracy'],
        'best_epoch_test_selected': record['best_epoch'],
        'test_samples': record['count']}, **extra.get(head, {})))
  results = {
      'experiment': config.experiment, 'mode': config.mode,
      'dataset': config.dataset, 'pipeline': config.pipeline,
      'seed': config.seed, 'model_width': config.model.width,
      'num_train_examples': config.num_train_examples,
      'examples_per_class': config.examples_per_class,
      'num_epochs': num_epochs,
      'complete': all(r['final_epoch'] == num_epochs for r in best.values()),
      'heads': heads}
  path = os.path.join(workdir, RESULTS_FILE)
  with open(path + '.tmp', 'w') as f:  # Atomic: never a half-written file.
    json.dump(results, f, indent=2)
  os.replace(path + '.tmp', path)
