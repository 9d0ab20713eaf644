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


def sgd(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9,
        nesterov: bool = True, weight_decay: float = 5e-4
        ) -> optax.GradientTransformation:
  """PyTorch-style SGD: ``g + wd * p``, then (Nesterov) momentum, then lr."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def from_config(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The recipe's SGD with ``config.learning_rate_table`` over epochs."""
  schedule = epoch_table_schedule(config.learning_rate_table,
                                  steps_per_epoch)
  return sgd(schedule, momentum=config.momentum, nesterov=config.nesterov,
             weight_decay=config.weight_decay)
