"""Where a run starts: what its workdir holds, read and checked.

:func:`read` only reads (the metrics file, the checkpoints' saved config
and network, the newest readable checkpoint): everything that can refuse
the run does so before ``loop.fit`` writes anything. :func:`set_aside`,
the one write, comes after the workdir lock is taken: it moves the
damaged checkpoints and unfinished saves :func:`read` found out of the way.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from rotnet_jax import config_schema
from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training.steps import TrainState
from rotnet_jax.workdir import checkpoint as checkpoint_lib


@dataclasses.dataclass(frozen=True)
class Start:
  """The point a run starts from: a new run's, or a checkpoint's.

  Attributes:
    state: the state to train from.
    epoch: the whole epochs already trained.
    epoch_step: the steps already taken of epoch `epoch` (a mid-epoch
      checkpoint).
    step: the optimiser steps already taken.
    best: per head, the test accuracy records of the epochs before.
    pending: the per-step metric sums of the steps not yet in a log line,
      so that the next line covers the same steps as in an uninterrupted
      run.
    damaged: ``(step, error)`` of the checkpoints newer than the one
      resumed from that cannot be read, newest first.
    partial: ``(step, folder name)`` of the saves that never completed.
  """
  state: TrainState
  epoch: int = 0
  epoch_step: int = 0
  step: int = 0
  best: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  pending: list[Any] = dataclasses.field(default_factory=list)
  damaged: list[tuple[int, Exception]] = dataclasses.field(
      default_factory=list)
  partial: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def read(workdir: str, *, network: dict[str, Any],
         config_dict: dict[str, Any], state: TrainState,
         steps_per_epoch: int) -> Start:
  """Where the run in `workdir` starts; reads only.

  Args:
    workdir: the run's workdir (it need not exist).
    network: JSON description of what is trained; the checkpoints' must
      be the same.
    config_dict: the resolved config (``run_files.resolved_config``).
    state: the freshly initialised state: a new run's start, and the
      restore target (shapes and shardings) of a checkpoint.
    steps_per_epoch: train steps per epoch.

  Returns:
    The start of a new run when `workdir` holds no checkpoint, else that
    of its newest readable checkpoint.

  Raises:
    InputError: the metrics file is damaged; the checkpoints are of a
      different network or, unless allowed, of another config; or there
      are checkpoints and none of them can be read.
  """
  metrics_lib.check_metrics_file(workdir)
  restored, damaged = _newest_readable(workdir, network, config_dict, state,
                                       steps_per_epoch)
  partial = checkpoint_lib.partial_saves(workdir)
  # Every process has read the workdir before any of them writes to it:
  # otherwise one could find the checkpoints folder another just created,
  # and their Orbax calls (which synchronise) would no longer match.
  parallel.barrier('rotnet_workdir_read')
  if restored is None:
    return Start(state, damaged=damaged, partial=partial)
  meta = restored['meta']
  start = Start(
      TrainState(restored['model']['params'],
                 restored['model']['batch_stats'], restored['opt_state']),
      epoch=meta['epoch'], step=meta['step'], best=meta['best'],
      # Checkpoints written before mid-epoch saves existed have neither.
      epoch_step=meta.get('epoch_step', 0),
      pending=list(meta.get('train_sums', [])),
      damaged=damaged, partial=partial)
  logging.info('Resumed from %s at step %d (epoch %d%s).',
               checkpoint_lib.checkpoint_dir(workdir), start.step,
               start.epoch,
               f', {start.epoch_step} steps into epoch {start.epoch + 1}'
               if start.epoch_step else '')
  return start


def set_aside(workdir: str, start: Start) -> None:
  """Moves the unreadable checkpoints and unfinished saves `read` found to
  ``damaged_checkpoints/`` (process 0; the others wait), so that new saves
  can take their steps and nothing is deleted. Call it holding the
  workdir lock."""
  if not (start.damaged or start.partial):
    return
  if jax.process_index() == 0:
    for step, error in start.damaged:
      moved = checkpoint_lib.set_aside(workdir, step)
      logging.warning(
          'Checkpoint step %d cannot be read (%s: %s); moved it to %s and '
          'resumed from step %d instead.', step, type(error).__name__,
          first_line(error), moved, start.step)
    for step, name in start.partial:
      moved = checkpoint_lib.set_aside_partial(workdir, name)
      logging.warning(
          'Checkpoint step %d was being written when the run stopped: '
          'skipped it (its unfinished folder moved to %s) and resumed from '
          '%s.', step, moved,
          f'step {start.step}' if start.step else 'the start')
  parallel.barrier('rotnet_set_aside_damaged_checkpoints')


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
