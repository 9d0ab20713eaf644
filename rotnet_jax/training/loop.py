"""The epoch loop shared by every run (pretext, supervised, evaluation).

Reads top to bottom: resume from the latest checkpoint (possibly in the
middle of an epoch), then for every epoch run the compiled train step over
the source, log, evaluate, save. On SIGTERM (``preemption.py``) the run
saves the step it is at and stops; re-running the same command resumes
there and ends with the parameters an uninterrupted run has.
What is trained is decided by the caller (``train.train_and_evaluate``),
which passes the initial state and the compiled steps
(``steps.CompiledSteps``): both return, per head, weighted metric sums
(``rotation``, ``classifier``, ``conv2``...). The loop returns the final
state and each head's final and best test accuracy; it does not know what
a results file contains.
"""

import collections
import contextlib
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from rotnet_jax import config_schema
from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.errors import TrainingDiverged
from rotnet_jax.errors import first_line
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import optim
from rotnet_jax.training import preemption
from rotnet_jax.training.steps import CompiledSteps
from rotnet_jax.training.steps import TrainState
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files


# Train steps the host may dispatch ahead of the devices. JAX dispatches
# asynchronously: unbounded, the loop can run a whole epoch ahead, and a
# SIGTERM would then wait for all of it before the save. Two queued steps
# keep an accelerator busy (dispatching one takes milliseconds).
_MAX_STEPS_AHEAD = 2


def evaluate(steps: CompiledSteps, state: TrainState, source
             ) -> dict[str, dict[str, float]]:
  """Per-head weighted loss and accuracy over one pass of `source`."""
  per_step = []
  for inputs in source.epoch(0):  # Evaluation order is fixed: epoch 0.
    per_step.append(steps.evaluate(state, inputs))
    if steps.sync_every_step:
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


def interactive() -> bool:
  """Whether a person is watching: a terminal, or a notebook (Jupyter,
  Colab). CI logs and redirected output are not."""
  try:
    if sys.stderr.isatty():
      return True
  except (AttributeError, ValueError):  # Replaced or closed stderr.
    pass
  shell = sys.modules.get('IPython')
  ipython = shell and getattr(shell, 'get_ipython', lambda: None)()
  return ipython is not None and 'IPKernelApp' in getattr(ipython, 'config',
                                                           {})


def progress_bar(total_steps: int, step: int):
  """A tqdm progress bar over the run's steps when :func:`interactive`
  (process 0 only); None otherwise, and then progress is a log line."""
  if jax.process_index() != 0 or not interactive():
    return None
  from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
  return tqdm_auto.tqdm(total=total_steps, initial=step, unit='step',
                        dynamic_ncols=True)


def _rates(table, steps_per_epoch: int, steps: int) -> np.ndarray:
  """The learning rate of each of the first `steps` optimiser steps under
  `table` (as ``optim.epoch_table_schedule`` gives it)."""
  rates = np.array([float(lr) for _, lr in table])
  boundaries = [int(round(float(end) * steps_per_epoch))
                for end, _ in table[:-1]]
  return rates[np.searchsorted(boundaries, np.arange(steps), side='right')]


def _config_changes(saved: dict[str, Any], current: dict[str, Any],
                    step: int, steps_per_epoch: int) -> list[str]:
  """The trajectory keys whose change makes the checkpoint one this config
  would not have written.

  A learning-rate table counts as changed only if it gives another rate
  to one of the `step` steps already taken: extending a schedule (more
  epochs, a new entry after them) resumes one consistent run.
  """
  changed = config_schema.trajectory_changes(saved, current)
  if 'learning_rate_table' in changed:
    try:
      same_past = np.array_equal(
          _rates(saved['learning_rate_table'], steps_per_epoch, step),
          _rates(current['learning_rate_table'], steps_per_epoch, step))
    except (TypeError, ValueError, IndexError):
      same_past = False  # Not a table this code wrote: a difference.
    if same_past:
      changed.remove('learning_rate_table')
  return changed


def _check_resumable(meta: dict[str, Any], network: dict[str, Any],
                     config_dict: dict[str, Any], directory: str,
                     steps_per_epoch: int) -> None:
  """Refuses a different network, and a changed trajectory unless the
  config allows it (``allow_config_change``: then it warns).

  Raises:
    InputError: naming every difference (key, checkpoint value, config
      value).
  """
  saved = meta.get('network', {})
  if saved != network:
    keys = sorted(set(saved) | set(network))
    details = '; '.join(f'{k}: checkpoint {saved.get(k)!r} vs config '
                        f'{network.get(k)!r}' for k in keys
                        if saved.get(k) != network.get(k))
    raise InputError(
        f'{directory} holds checkpoints of a different network ({details}). '
        'Use a new --workdir, or the same settings to resume.')
  if meta.get('epoch', 0) >= config_dict.get('num_epochs', 0):
    return  # Nothing will be trained: no config change can matter.
  saved_config = meta.get('config', {})
  changed = _config_changes(saved_config, config_dict, meta.get('step', 0),
                            steps_per_epoch)
  if not changed:
    return
  details = '; '.join(f'{key}: checkpoint {saved_config[key]!r}, config '
                      f'{config_dict.get(key)!r}' for key in changed)
  if not config_dict.get('allow_config_change'):
    # A silent change would give a model that no single config describes,
    # and the config.json of the workdir would claim otherwise.
    raise InputError(
        f'{directory} holds checkpoints trained with another config '
        f'({details}). Rerun with the values of the checkpoint to resume, '
        'pass --config.allow_config_change=True to go on with the new ones '
        '(the result is then not one consistent run), or use a new '
        '--workdir. (A larger num_epochs is always allowed.)')
  logging.warning('Resuming with a changed config (allow_config_change): '
                  '%s. The result is not one consistent run.', details)


def _newest_readable(workdir: str, network, config_dict, state,
                     steps_per_epoch: int):
  """Restores the newest readable checkpoint of `workdir`; reads only.

  Saves that never completed (Orbax's temporary folders) are never
  candidates: Orbax does not list them.

  Returns:
    ``(restored, damaged)``: the restored items (None for a new run) and
    the steps newer than it that cannot be read (a crash or a full disk
    while they were written, a file deleted by hand), newest first.

  Raises:
    InputError: the checkpoints are of a different network or, unless
      allowed, of another config; or there are checkpoints and none of
      them can be read.
  """
  if not epath.Path(checkpoint_lib.checkpoint_dir(workdir)).is_dir():
    return None, []
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  damaged = []
  try:
    for step in sorted(checkpoints.all_steps(), reverse=True):
      try:
        meta = checkpoints.read_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((step, e))
        continue
      _check_resumable(meta, network, config_dict, checkpoints.directory,
                       steps_per_epoch)
      try:
        return checkpoints.restore(step, model={
            'params': state.params, 'batch_stats': state.batch_stats},
                                   opt_state=state.opt_state), damaged
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((step, e))
  finally:
    checkpoints.close()
  if damaged:
    step, error = damaged[0]
    raise InputError(
        f'no checkpoint in {checkpoints.directory} can be read (step {step}: '
        f'{type(error).__name__}: {first_line(error)}). Move the damaged '
        'step folders away to train from scratch, or use a new --workdir.')
  return None, []


def _set_aside(workdir: str, damaged, partial, resumed_step: int) -> None:
  """Moves unreadable checkpoints and unfinished saves to
  ``damaged_checkpoints/`` (process 0; the others wait), so that new saves
  can take their steps and nothing is deleted."""
  if jax.process_index() == 0:
    for step, error in damaged:
      moved = checkpoint_lib.set_aside(workdir, step)
      logging.warning(
          'Checkpoint step %d cannot be read (%s: %s); moved it to %s and '
          'resumed from step %d instead.', step, type(error).__name__,
          first_line(error), moved, resumed_step)
    for step, name in partial:
      moved = checkpoint_lib.set_aside_partial(workdir, name)
      logging.warning(
          'Checkpoint step %d was being written when the run stopped: '
          'skipped it (its unfinished folder moved to %s) and resumed from '
          '%s.', step, moved,
          f'step {resumed_step}' if resumed_step else 'the start')
  parallel.barrier('rotnet_set_aside_damaged_checkpoints')


def _checkpoint_bytes(state: TrainState) -> int:
  """About what one checkpoint of `state` takes on disk.

  The arrays plus Orbax's metadata (about 150 KB whatever the model).
  """
  arrays = sum(x.nbytes for x in jax.tree.leaves(state))
  return int(1.1 * arrays) + (256 << 10)


def check_disk_space(workdir: str, state: TrainState) -> None:
  """Raises InputError unless the workdir's disk can take a checkpoint.

  Checked before training and before every save: a save that runs out of
  space fails in Orbax's background threads, long after the cause.
  """
  # A new workdir: the disk of the folder it will be made in. None: Cloud
  # Storage and the like, no disk of ours to fill.
  free = filesystem.free_bytes(workdir)
  if free is None:
    return
  needed = _checkpoint_bytes(state)
  if free < needed:
    raise InputError(
        f'no space left on the device of --workdir={workdir}: '
        f'{free:,} bytes free, a checkpoint of this run needs about '
        f'{needed:,}. Free some space (or use another --workdir) and rerun '
        'the same command: it resumes from the last complete checkpoint.')


def _track_best(record, summary, epoch: int) -> dict[str, Any]:
  """Final and best-so-far test accuracy of one head, after an evaluation."""
  record = dict(record or {'best_accuracy': -1.0, 'best_epoch': 0})
  if summary['accuracy'] > record['best_accuracy']:
    record.update(best_accuracy=summary['accuracy'], best_epoch=epoch)
  record.update(final_accuracy=summary['accuracy'], final_epoch=epoch,
                count=summary['count'])
  return record


def fit(config, workdir: str, *, network: dict[str, Any], state: TrainState,
        steps: CompiledSteps, train_source, test_source, images_per_step: int
        ) -> tuple[TrainState, dict[str, dict[str, Any]]]:
  """Trains `state` for ``config.num_epochs``, resuming from `workdir`.

  Args:
    config: the run config (schedule, logging and checkpoint intervals).
    workdir: where checkpoints, metrics and ``config.json`` go.
    network: JSON description of what is trained (backbone spec, heads);
      saved with every checkpoint, and a resumed run must match it.
    state: the freshly initialised state (its shapes and shardings are the
      restore target when resuming).
    steps: the compiled train and eval steps.
    train_source, test_source: data sources.
    images_per_step: samples a train step consumes (for images/s).

  Returns:
    The final state, and per head ``{'final_accuracy', 'final_epoch',
    'best_accuracy', 'best_epoch', 'count'}`` of the test evaluations (the
    best one selected on the test set), including those of the epochs
    before a resume; ``{}`` when the workdir already held every epoch
    (nothing was trained, nothing written).
  """
  # Everything that can refuse the run reads only; the first write comes
  # after the last check.
  metrics_lib.check_metrics_file(workdir)
  config_dict = run_files.resolved_config(config)
  steps_per_epoch = train_source.steps_per_epoch
  restored, damaged = _newest_readable(workdir, network, config_dict, state,
                                       steps_per_epoch)
  partial = checkpoint_lib.partial_saves(workdir)
  # Every process has read the workdir before any of them writes to it:
  # otherwise one could find the checkpoints folder another just created,
  # and their Orbax calls (which synchronise) would no longer match.
  parallel.barrier('rotnet_workdir_read')
  # `epoch_step`: steps already taken of epoch `start_epoch` (a mid-epoch
  # checkpoint); `pending`: the per-step metric sums of the steps not yet
  # in a log line, so that the next line covers the same steps as in an
  # uninterrupted run.
  start_epoch, epoch_step, step, best, pending = 0, 0, 0, {}, []
  if restored is not None:
    state = TrainState(restored['model']['params'],
                       restored['model']['batch_stats'],
                       restored['opt_state'])
    meta = restored['meta']
    start_epoch, step, best = meta['epoch'], meta['step'], meta['best']
    # Checkpoints written before mid-epoch saves existed have neither.
    epoch_step = meta.get('epoch_step', 0)
    pending = list(meta.get('train_sums', []))
    logging.info('Resumed from %s at step %d (epoch %d%s).',
                 checkpoint_lib.checkpoint_dir(workdir), step, start_epoch,
                 f', {epoch_step} steps into epoch {start_epoch + 1}'
                 if epoch_step else '')
  if start_epoch >= config.num_epochs:
    # A no-op run writes nothing: the workdir stays as it was.
    logging.info('Nothing to train: %s already holds epoch %d of %d.',
                 workdir, start_epoch, config.num_epochs)
    return state, {}
  check_disk_space(workdir, state)

  # One run per workdir: from here on this run writes to it.
  with workdir_lock.lock(workdir), preemption.Watcher() as watcher:
    if damaged or partial:
      _set_aside(workdir, damaged, partial, step)
    checkpoints = checkpoint_lib.Checkpointer(
        workdir, max_to_keep=config.keep_checkpoints)
    # Events after the checkpoint we resume from are dropped: they are redone.
    writer = metrics_lib.MetricWriter(workdir, keep_up_to_step=step,
                                      run_config=config_dict,
                                      wandb_project=config.wandb_project)
    run_files.write_config(workdir, config, network)

    total_steps = config.num_epochs * steps_per_epoch
    learning_rate = optim.epoch_table_schedule(config.learning_rate_table,
                                               steps_per_epoch)
    progress = _Progress(step, total_steps)
    logging.info('Training %d epochs x %d steps of %d images (%d per step '
                 'after the task), pipeline=%s, %d examples. Trained '
                 'parameters:\n%s', config.num_epochs, steps_per_epoch,
                 config.batch_size, images_per_step, config.pipeline,
                 train_source.num_examples,
                 metrics_lib.parameter_overview(state.params))
    bar = progress_bar(total_steps, step)

    # Of replicated variables: one replicated boolean, the same verdict on
    # every process.
    all_finite = jax.jit(lambda *trees: jnp.all(jnp.stack([
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)])))

    def check_finite():
      # Every step since the last check, before its loss is logged or its
      # parameters saved: a diverged run stops with its last good checkpoint.
      for index, sums in enumerate(pending):
        for head, head_sums in sums.items():
          if not np.isfinite(np.asarray(head_sums['loss_sum'])):
            bad_step = step - len(pending) + index + 1
            raise TrainingDiverged(
                f'the {head} loss is {float(np.asarray(head_sums["loss_sum"]))}'
                f' at step {bad_step} (epoch {bad_step / steps_per_epoch:.2f}):'
                ' training diverged. Nothing after it was saved; the workdir '
                f'keeps its last good checkpoint ({workdir}). Lower the '
                'learning rate (config.learning_rate_table) or try another '
                'seed, then rerun.')

    def check_parameters(epoch_text):
      # The last update is in no loss yet: check its result before it is
      # tested or saved.
      if not bool(all_finite(state.params, state.batch_stats)):
        raise TrainingDiverged(
            f'the parameters hold NaN or infinite values after step '
            f'{step} (epoch {epoch_text}): training diverged. Nothing of it '
            f'was saved; the workdir keeps its last good checkpoint '
            f'({workdir}). Lower the learning rate '
            '(config.learning_rate_table) or try another seed, then rerun.')

    def log_train(epoch):
      nonlocal pending
      check_finite()
      summaries = {head: metrics_lib.summarize([s[head] for s in pending])
                   for head in pending[0]}
      speed, eta = progress.update(step, images_per_step)
      # The rate of the step just taken (optax counts updates from 0).
      rate = float(learning_rate(step - 1))
      for head, summary in summaries.items():
        writer.write(step=step, epoch=step / steps_per_epoch, split='train',
                     head=head, loss=summary['loss'],
                     accuracy=summary['accuracy'], images_per_sec=speed,
                     learning_rate=rate)
      line = (f'epoch {epoch + 1}/{config.num_epochs} step {step}/'
              f'{total_steps} | train {_describe(summaries)} | lr {rate:g} | '
              f'{speed:.0f} img/s | ETA {eta}')
      if bar is None:
        logging.info(line)
      else:
        bar.set_postfix_str(f'train {_describe(summaries)} | lr {rate:g}',
                            refresh=False)
        logging.debug(line)
      pending = []

    def save(epochs_done: int, steps_into_next: int) -> None:
      """Starts the save of `step`: `epochs_done` whole epochs, and
      `steps_into_next` steps of the next one."""
      check_disk_space(workdir, state)
      # Through JSON now: the save is written in the background, while the
      # loop goes on changing `best` and `pending`.
      meta = json.loads(json.dumps({
          'epoch': epochs_done, 'epoch_step': steps_into_next, 'step': step,
          'network': network, 'config': config_dict, 'best': best,
          'train_sums': _host_sums(pending)}))
      checkpoints.save(step, model={'params': state.params,
                                    'batch_stats': state.batch_stats},
                       opt_state=state.opt_state, meta=meta)

    def stop(epochs_done: int, steps_into_next: int):
      """Waits for the checkpoint of `step` to be on disk; stops the run."""
      checkpoints.wait()
      seconds = watcher.seconds()
      logging.warning(
          'SIGTERM: saved step %d (epoch %d/%d, %d of its %d steps done) to '
          '%s, on disk %.1f s after the signal; stopping. Rerun the same '
          'command to resume from it.', step,
          min(epochs_done + 1, config.num_epochs), config.num_epochs,
          steps_into_next, steps_per_epoch,
          checkpoint_lib.checkpoint_dir(workdir), seconds)
      raise preemption.Preempted(step, epochs_done, seconds)

    def every_steps_due() -> bool:
      every = config.checkpoint_every_steps
      return bool(every) and step % every == 0

    in_flight = collections.deque()
    try:
      for epoch in range(start_epoch, config.num_epochs):
        first = epoch_step if epoch == start_epoch else 0
        epoch_step, preempted = first, False
        for inputs in train_source.epoch(epoch, start_step=first):
          state, sums = steps.train(state, inputs, step)
          if steps.sync_every_step:
            jax.block_until_ready(sums)
          pending.append(sums)
          in_flight.append(sums)
          if len(in_flight) > _MAX_STEPS_AHEAD:
            jax.block_until_ready(in_flight.popleft())
          step += 1
          epoch_step += 1
          if bar is not None:
            bar.update(1)
          if step % config.log_every_steps == 0:
            log_train(epoch)
          # Asked every step, on every process (the sync point needs it).
          preempted = watcher.reached(step)
          # At the epoch's last step, the epoch's end saves instead (after
          # its test pass, which the resumed run would otherwise skip).
          if epoch_step < steps_per_epoch and (preempted or every_steps_due()):
            check_finite()
            check_parameters(f'{step / steps_per_epoch:.2f}')
            save(epoch, epoch_step)
            if preempted:
              stop(epoch, epoch_step)
        done = epoch + 1
        last = done == config.num_epochs
        check_finite()  # The steps not logged yet, before testing or saving.
        check_parameters(str(done))
        if last and pending:
          log_train(epoch)  # The tail of the last epoch.
        if done % config.eval_every_epochs == 0 or last:
          with progress.paused():
            start = time.time()
            summaries = evaluate(steps, state, test_source)
            seconds = time.time() - start
          for head, summary in summaries.items():
            writer.write(step=step, epoch=done, split='test', head=head,
                         loss=summary['loss'], accuracy=summary['accuracy'],
                         images_per_sec=summary['count'] / seconds)
            best[head] = _track_best(best.get(head), summary, done)
          logging.info('epoch %d/%d | test %s (%d test samples)', done,
                       config.num_epochs, _describe(summaries),
                       next(iter(summaries.values()))['count'])
        if (done % config.checkpoint_every_epochs == 0 or last or preempted or
            every_steps_due()):
          save(done, 0)
        if preempted and not last:
          stop(done, 0)
    finally:
      # Also on errors: finish the asynchronous save in flight.
      try:
        checkpoints.close()
      finally:
        writer.close()
        if bar is not None:
          bar.close()
    return state, best


def _host_sums(pending) -> list[dict[str, dict[str, float]]]:
  """Per-step metric sums as JSON numbers (float32 values are exact as
  floats: summed again after a resume, they give the same log line)."""
  return [{head: {key: float(np.asarray(value)) for key, value in
                  head_sums.items()} for head, head_sums in sums.items()}
          for sums in jax.device_get(pending)]
