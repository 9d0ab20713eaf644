"""SGD of the RotNet recipe, with its per-epoch learning-rate table.

The official code sets the learning rate from a table of
``(end_epoch, lr)`` pairs: epoch ``e`` (0-based) uses the first ``lr``
whose ``end_epoch > e``, and the last value holds after the table ends.
The optimiser is PyTorch's SGD with Nesterov momentum and weight decay
added to the gradient ("coupled") on every parameter.
"""

from collections.abc import Sequence

import optax

from rotnet_jax import config_schema


def epoch_table_schedule(table: Sequence[Sequence[float]],
                         steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate table as an optax schedule over optimiser steps.

  Args:
    table: ``((end_epoch, lr), ...)`` with increasing end epochs.
    steps_per_epoch: optimiser steps in one epoch.
  """
  config_schema.check_learning_rate_table(table)
  schedules = [optax.constant_schedule(float(lr)) for _, lr in table]
  boundaries = [int(round(end * steps_per_epoch)) for end, _ in table[:-1]]
  return optax.join_schedules(schedules, boundaries)


def step_table_schedule(table: Sequence[Sequence[float]]) -> optax.Schedule:
  """A ``((end_step, lr), ...)`` table as an optax schedule: steps
  ``[0, end_0)`` at ``lr_0``, and so on; the last rate holds after it."""
  return epoch_table_schedule(table, steps_per_epoch=1)


def schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The run's learning rate per optimiser step.

  ``config.learning_rate_steps_table`` when set (schedules given in
  iterations, as PASCAL VOC's), else ``config.learning_rate_table`` over
  epochs.
  """
  if config.get('learning_rate_steps_table'):
    return step_table_schedule(config.learning_rate_steps_table)
  return epoch_table_schedule(config.learning_rate_table, steps_per_epoch)


def sgd(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9,
        nesterov: bool = True, weight_decay: float = 5e-4,
        clip_norm: float = 0.0) -> optax.GradientTransformation:
  """PyTorch-style SGD: ``g + wd * p``, then (Nesterov) momentum, then lr.

  With `clip_norm`, the gradient is first scaled down to that global norm
  when it is longer (Caffe's ``clip_gradients``, which also clips before
  adding weight decay).
  """
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  return optax.chain(
      *parts, optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def from_config(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The recipe's SGD with the run's :func:`schedule`."""
  return sgd(schedule(config, steps_per_epoch), momentum=config.momentum,
             nesterov=config.nesterov, weight_decay=config.weight_decay,
             clip_norm=config.get('grad_clip_norm', 0.0))
