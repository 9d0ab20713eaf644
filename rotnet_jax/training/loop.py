"""The epoch loop shared by every run (pretext, supervised, evaluation).

``fit`` reads top to bottom: resume from the latest checkpoint (possibly
in the middle of an epoch; ``resume.py``), then for every epoch run the
compiled train step over the source, log, evaluate, save. On SIGTERM or
Ctrl-C (SIGINT; ``preemption.py``) the run saves the step it is at and
stops; re-running the same command resumes there and ends with the
parameters an uninterrupted run has. Its parts hold no state of the run:
what changes as it trains (`_RunProgress`) is handed to each of them
(`_DivergenceGuard`, `_RunLog`, `_Saver`).
What is trained is decided by the caller (``train.train_and_evaluate``),
which passes the initial state and the compiled steps
(``steps.CompiledSteps``): both return, per head, weighted metric sums
(``rotation``, ``classifier``, ``conv2``...). The loop returns the final
state and each head's final and best test accuracy; it does not know what
a results file contains.
"""

import collections
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rotnet_jax.errors import InputError
from rotnet_jax.errors import TrainingDiverged
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import optim
from rotnet_jax.training import preemption
from rotnet_jax.training import resume
from rotnet_jax.training import voc_metrics
from rotnet_jax.training.steps import CompiledSteps
from rotnet_jax.training.steps import TrainState
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files


# Train steps the host may dispatch ahead of the devices. JAX dispatches
# asynchronously: unbounded, the loop can run a whole epoch ahead, and a
# SIGTERM or Ctrl-C would then wait for all of it before the save. Two
# queued steps keep an accelerator busy (dispatching one takes
# milliseconds).
_MAX_STEPS_AHEAD = 2


def evaluate(steps: CompiledSteps, state: TrainState, source
             ) -> dict[str, dict[str, float]]:
  """Per-head weighted loss and accuracy over one pass of `source`."""
  per_step = []
  for inputs in source.epoch(0):  # Evaluation order is fixed: epoch 0.
    per_step.append(steps.evaluate(state, inputs))
    if steps.sync_every_step:
      jax.block_until_ready(per_step[-1])
  # A detection split's ground truth stays on the host, with its source.
  ground_truth = getattr(source, 'ground_truth', None)
  return {head: metrics_lib.summarize([sums[head] for sums in per_step],
                                      ground_truth)
          for head in per_step[0]} if per_step else {}


class _Pace:
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


def _metric_text(summary: dict[str, float], loss_digits: int) -> str:
  text = f"loss {summary['loss']:.{loss_digits}f}"
  name = metrics_lib.headline(summary)
  if name is not None:
    label = 'acc' if name == 'accuracy' else name
    text += f' {label} {100 * summary[name]:.2f}%'
  return text


def _describe(summaries: dict[str, dict[str, float]]) -> str:
  if len(summaries) == 1:
    (summary,) = summaries.values()
    return _metric_text(summary, 4)
  return ', '.join(f'{head} {_metric_text(s, 3)}'
                   for head, s in summaries.items())


def _metric_fields(summary: dict[str, float]) -> dict[str, float]:
  """A summary's fields for ``metrics.jsonl``: the loss and every metric
  (``accuracy``; ``mAP`` and ``mAP_11point``; ``mIoU`` and
  ``pixel_accuracy``)."""
  return {k: v for k, v in summary.items() if k != 'count'}


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
  """Final and best-so-far test score of one head, after an evaluation.

  The score is the summary's :func:`metrics.headline` metric (accuracy,
  mAP or mIoU); the record names it (``metric``) and keeps
  ``final_<metric>`` and ``best_<metric>``.
  """
  name = metrics_lib.headline(summary)
  record = dict(record or {'metric': name, f'best_{name}': -1.0,
                           'best_epoch': 0})
  if summary[name] > record[f'best_{name}']:
    record.update({f'best_{name}': summary[name], 'best_epoch': epoch})
  record.update({f'final_{name}': summary[name], 'final_epoch': epoch,
                 'count': summary['count']})
  return record


@dataclasses.dataclass
class _RunProgress:
  """What the loop changes as it trains; its parts get it explicitly.

  Attributes:
    state: the current train state.
    step: the optimiser steps taken.
    pending: the per-step metric sums of the steps not yet in a log line.
    best: per head, the test accuracy records (see `_track_best`).
    in_flight: the metric sums of the dispatched steps the host has not
      waited for yet, oldest first.
  """
  state: TrainState
  step: int
  pending: list[Any]
  best: dict[str, dict[str, Any]]
  in_flight: collections.deque = dataclasses.field(
      default_factory=collections.deque)

  def take_pending(self) -> list[Any]:
    """The pending sums, which are then no longer pending."""
    pending, self.pending = self.pending, []
    return pending


def _train_step(steps: CompiledSteps, run: _RunProgress, inputs) -> None:
  """Dispatches the train step of `run.step` on `inputs`."""
  run.state, sums = steps.train(run.state, inputs, run.step)
  if steps.sync_every_step:
    jax.block_until_ready(sums)
  run.pending.append(sums)
  run.in_flight.append(sums)
  if len(run.in_flight) > _MAX_STEPS_AHEAD:
    jax.block_until_ready(run.in_flight.popleft())
  run.step += 1


class _DivergenceGuard:
  """Stops a diverged run before its numbers are logged, tested or saved.

  Holds what its messages name and the compiled check, nothing of the run:
  each check is given what it checks.
  """

  def __init__(self, workdir: str, steps_per_epoch: int):
    self._workdir = workdir
    self._steps_per_epoch = steps_per_epoch
    # Of replicated variables: one replicated boolean, the same verdict on
    # every process.
    self._all_finite = jax.jit(lambda *trees: jnp.all(jnp.stack([
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)])))

  def check_losses(self, pending, step: int) -> None:
    """Raises TrainingDiverged at the first non-finite loss of `pending`,
    the sums of the steps up to `step`."""
    # Every step since the last check, before its loss is logged or its
    # parameters saved: a diverged run stops with its last good checkpoint.
    for index, sums in enumerate(pending):
      for head, head_sums in sums.items():
        if not np.isfinite(np.asarray(head_sums['loss_sum'])):
          bad_step = step - len(pending) + index + 1
          raise TrainingDiverged(
              f'the {head} loss is {float(np.asarray(head_sums["loss_sum"]))}'
              f' at step {bad_step} (epoch '
              f'{bad_step / self._steps_per_epoch:.2f}): training diverged. '
              'Nothing after it was saved; the workdir keeps its last good '
              f'checkpoint ({self._workdir}). Lower the learning rate '
              '(config.learning_rate_table) or try another seed, then rerun.')

  def check_parameters(self, state: TrainState, step: int,
                       epoch_text: str) -> None:
    """Raises TrainingDiverged if `state`, after `step`, holds NaN or
    infinite parameters or batch statistics."""
    # The last update is in no loss yet: check its result before it is
    # tested or saved.
    if not bool(self._all_finite(state.params, state.batch_stats)):
      raise TrainingDiverged(
          f'the parameters hold NaN or infinite values after step '
          f'{step} (epoch {epoch_text}): training diverged. Nothing of it '
          f'was saved; the workdir keeps its last good checkpoint '
          f'({self._workdir}). Lower the learning rate '
          '(config.learning_rate_table) or try another seed, then rerun.')

  def check(self, run: _RunProgress, epoch_text: str) -> None:
    """Both checks, on the pending losses and the state of `run`."""
    self.check_losses(run.pending, run.step)
    self.check_parameters(run.state, run.step, epoch_text)


class _RunLog:
  """The run's log lines, metric events and progress bar."""

  def __init__(self, config, writer: metrics_lib.MetricWriter, train_source,
               images_per_step: int, run: _RunProgress):
    """Logs what is trained and opens the progress bar.

    Args:
      config: the run config (schedule and epochs).
      writer: where the metric events go; closed by :meth:`close`.
      train_source: the train data source.
      images_per_step: samples a train step consumes (for images/s).
      run: the run at its start.
    """
    self._writer = writer
    self._num_epochs = config.num_epochs
    self._steps_per_epoch = train_source.steps_per_epoch
    self._images_per_step = images_per_step
    self._total_steps = config.num_epochs * self._steps_per_epoch
    self._learning_rate = optim.schedule(config, self._steps_per_epoch)
    self._pace = _Pace(run.step, self._total_steps)
    logging.info('Training %d epochs x %d steps of %d images (%d per step '
                 'after the task), pipeline=%s, %d examples. Trained '
                 'parameters:\n%s', config.num_epochs, self._steps_per_epoch,
                 config.batch_size, images_per_step, config.pipeline,
                 train_source.num_examples,
                 metrics_lib.parameter_overview(run.state.params))
    self._bar = progress_bar(self._total_steps, run.step)

  def step_done(self) -> None:
    """Advances the progress bar by one step."""
    if self._bar is not None:
      self._bar.update(1)

  def train(self, step: int, epoch: int, pending) -> None:
    """Logs the train summary of `pending`, the sums of the steps up to
    `step` since the last line, during `epoch` (counted from 0)."""
    summaries = {head: metrics_lib.summarize([s[head] for s in pending])
                 for head in pending[0]}
    speed, eta = self._pace.update(step, self._images_per_step)
    # The rate of the step just taken (optax counts updates from 0).
    rate = float(self._learning_rate(step - 1))
    for head, summary in summaries.items():
      self._writer.write(step=step, epoch=step / self._steps_per_epoch,
                         split='train', head=head, **_metric_fields(summary),
                         images_per_sec=speed, learning_rate=rate)
    line = (f'epoch {epoch + 1}/{self._num_epochs} step {step}/'
            f'{self._total_steps} | train {_describe(summaries)} | lr '
            f'{rate:g} | {speed:.0f} img/s | ETA {eta}')
    if self._bar is None:
      logging.info(line)
    else:
      self._bar.set_postfix_str(f'train {_describe(summaries)} | lr {rate:g}',
                                refresh=False)
      logging.debug(line)

  def paused(self):
    """A context in which time counts as neither training nor ETA."""
    return self._pace.paused()

  def test(self, step: int, epochs_done: int,
           summaries: dict[str, dict[str, float]], seconds: float) -> None:
    """Logs the test `summaries` after `epochs_done`, evaluated in
    `seconds`."""
    for head, summary in summaries.items():
      self._writer.write(step=step, epoch=epochs_done, split='test',
                         head=head, **_metric_fields(summary),
                         images_per_sec=summary['count'] / seconds)
    logging.info('epoch %d/%d | test %s (%d test samples)', epochs_done,
                 self._num_epochs, _describe(summaries),
                 next(iter(summaries.values()))['count'])

  def close(self) -> None:
    """Closes the metric writer, then the progress bar."""
    self._writer.close()
    if self._bar is not None:
      self._bar.close()


def _test(steps: CompiledSteps, test_source, run: _RunProgress,
          log: _RunLog, epochs_done: int, workdir: str) -> None:
  """Evaluates `run.state` after `epochs_done`, logs it and updates
  `run.best`; a detection head's detections are written in the devkit's
  format (``WORKDIR/detections/``, replaced at every test)."""
  with log.paused():
    start = time.time()
    summaries = evaluate(steps, run.state, test_source)
    seconds = time.time() - start
  for summary in summaries.values():
    detections = summary.pop('detections', None)
    if detections is not None and jax.process_index() == 0:
      run_files.write_detections(workdir, voc_metrics.devkit_detection_files(
          detections, test_source.ids, test_source.split_name))
  log.test(run.step, epochs_done, summaries, seconds)
  for head, summary in summaries.items():
    run.best[head] = _track_best(run.best.get(head), summary, epochs_done)


class _Saver:
  """The run's checkpoints, and the stop after one on SIGTERM or SIGINT."""

  def __init__(self, config, workdir: str, network: dict[str, Any],
               config_dict: dict[str, Any], steps_per_epoch: int):
    self._checkpoints = checkpoint_lib.Checkpointer(
        workdir, max_to_keep=config.keep_checkpoints)
    self._workdir = workdir
    self._network = network
    self._config_dict = config_dict
    self._every_steps = config.checkpoint_every_steps
    self._num_epochs = config.num_epochs
    self._steps_per_epoch = steps_per_epoch

  def due(self, step: int) -> bool:
    """Whether ``config.checkpoint_every_steps`` asks for a save of `step`."""
    return bool(self._every_steps) and step % self._every_steps == 0

  def save(self, run: _RunProgress, epochs_done: int,
           steps_into_next: int) -> None:
    """Starts the save of `run` at its step: `epochs_done` whole epochs, and
    `steps_into_next` steps of the next one."""
    check_disk_space(self._workdir, run.state)
    # Through JSON now: the save is written in the background, while the
    # loop goes on changing `best` and `pending`.
    meta = json.loads(json.dumps({
        'epoch': epochs_done, 'epoch_step': steps_into_next,
        'step': run.step, 'network': self._network,
        'config': self._config_dict, 'best': run.best,
        'train_sums': _host_sums(run.pending)}))
    self._checkpoints.save(run.step, model={
        'params': run.state.params, 'batch_stats': run.state.batch_stats},
                           opt_state=run.state.opt_state, meta=meta)

  def stop(self, step: int, epochs_done: int, steps_into_next: int,
           watcher: preemption.Watcher) -> NoReturn:
    """Waits for the checkpoint of `step` to be on disk; stops the run.

    Raises:
      preemption.Preempted: always.
    """
    self._checkpoints.wait()
    watcher.saved()
    seconds = watcher.seconds()
    logging.warning(
        '%s: saved step %d (epoch %d/%d, %d of its %d steps done) to %s, on '
        'disk %.1f s after the signal; stopping. Rerun the same command to '
        'resume from it.', watcher.signal_name(), step,
        min(epochs_done + 1, self._num_epochs), self._num_epochs,
        steps_into_next, self._steps_per_epoch,
        checkpoint_lib.checkpoint_dir(self._workdir), seconds)
    raise preemption.Preempted(step, epochs_done, seconds, watcher.signum)

  def close(self) -> None:
    """Finishes the save in flight."""
    self._checkpoints.close()


def fit(config, workdir: str, *, network: dict[str, Any], state: TrainState,
        steps: CompiledSteps, train_source, test_source, images_per_step: int,
        on_complete: Callable[[dict[str, dict[str, Any]]], None] | None = None
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
    on_complete: called with the per-head records (see Returns) once the
      last epoch is saved, while the run still holds the workdir's lock
      (the driver writes ``results.json`` there).

  Returns:
    The final state, and per head ``{'metric', 'final_<metric>',
    'final_epoch', 'best_<metric>', 'best_epoch', 'count'}`` of the test evaluations (the
    best one selected on the test set), including those of the epochs
    before a resume; ``{}`` when the workdir already held every epoch
    (nothing was trained, nothing written).
  """
  # Everything that can refuse the run reads only; the first write comes
  # after the last check.
  config_dict = run_files.resolved_config(config)
  steps_per_epoch = train_source.steps_per_epoch
  start = resume.read(workdir, network=network, config_dict=config_dict,
                      state=state, steps_per_epoch=steps_per_epoch)
  if start.epoch >= config.num_epochs:
    # A no-op run writes nothing: the workdir stays as it was.
    logging.info('Nothing to train: %s already holds epoch %d of %d.',
                 workdir, start.epoch, config.num_epochs)
    return start.state, {}
  check_disk_space(workdir, start.state)

  # One run per workdir: from here on this run writes to it.
  with workdir_lock.lock(workdir), preemption.Watcher() as watcher:
    resume.set_aside(workdir, start)
    saver = _Saver(config, workdir, network, config_dict, steps_per_epoch)
    # Events after the checkpoint we resume from are dropped: they are redone.
    writer = metrics_lib.MetricWriter(workdir, keep_up_to_step=start.step,
                                      run_config=config_dict,
                                      wandb_project=config.wandb_project)
    run_files.write_config(workdir, config, network)
    run = _RunProgress(start.state, start.step, list(start.pending),
                       dict(start.best))
    log = _RunLog(config, writer, train_source, images_per_step, run)
    guard = _DivergenceGuard(workdir, steps_per_epoch)
    try:
      for epoch in range(start.epoch, config.num_epochs):
        epoch_step = start.epoch_step if epoch == start.epoch else 0
        preempted = False
        for inputs in train_source.epoch(epoch, start_step=epoch_step):
          _train_step(steps, run, inputs)
          epoch_step += 1
          log.step_done()
          if run.step % config.log_every_steps == 0:
            guard.check_losses(run.pending, run.step)
            log.train(run.step, epoch, run.take_pending())
          # Asked every step, on every process (the sync point needs it).
          preempted = watcher.reached(run.step)
          # At the epoch's last step, the epoch's end saves instead (after
          # its test pass, which the resumed run would otherwise skip).
          if epoch_step < steps_per_epoch and (preempted or
                                               saver.due(run.step)):
            guard.check(run, f'{run.step / steps_per_epoch:.2f}')
            saver.save(run, epoch, epoch_step)
            if preempted:
              saver.stop(run.step, epoch, epoch_step, watcher)
        done = epoch + 1
        last = done == config.num_epochs
        # The steps not logged yet, before testing or saving.
        guard.check(run, str(done))
        if last and run.pending:  # The tail of the last epoch.
          log.train(run.step, epoch, run.take_pending())
        if done % config.eval_every_epochs == 0 or last:
          _test(steps, test_source, run, log, done, workdir)
        if (done % config.checkpoint_every_epochs == 0 or last or preempted or
            saver.due(run.step)):
          saver.save(run, done, 0)
        if preempted and not last:
          saver.stop(run.step, done, 0, watcher)
    finally:
      # Also on errors: finish the asynchronous save in flight.
      try:
        saver.close()
      finally:
        log.close()
    if on_complete is not None and run.best:
      on_complete(run.best)
  return run.state, run.best


def _host_sums(pending) -> list[dict[str, dict[str, float]]]:
  """Per-step metric sums as JSON numbers (float32 values are exact as
  floats: summed again after a resume, they give the same log line); an
  array sum (a segmentation head's confusion matrix) as nested lists."""
  def json_value(value):
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else value.tolist()

  return [{head: {key: json_value(value) for key, value in
                  head_sums.items()} for head, head_sums in sums.items()}
          for sums in jax.device_get(pending)]
