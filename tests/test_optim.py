"""The learning-rate table and PyTorch-style SGD, and the table's rule on
resuming a run."""

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rotnet_jax import config_schema
from rotnet_jax.errors import InputError
from rotnet_jax.training import optim
from rotnet_jax.training import resume
from rotnet_jax.workdir import run_files


def test_epoch_table_becomes_a_step_schedule():
  schedule = optim.epoch_table_schedule(
      ((60, 0.1), (120, 0.02), (160, 0.004), (200, 0.0008)), 390)
  expected = {0: 0.1, 60 * 390 - 1: 0.1, 60 * 390: 0.02, 120 * 390: 0.004,
              160 * 390 - 1: 0.004, 160 * 390: 0.0008, 250 * 390: 0.0008}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_bad_tables_are_rejected():
  for table in ((), ((10, 0.1), (5, 0.01)), ((10, -0.1),), ((10,),)):
    with pytest.raises(ValueError):
      config_schema.check_learning_rate_table(table)


def test_sgd_matches_pytorch_nesterov_with_coupled_weight_decay():
  # PyTorch: g += wd * p; buf = mu * buf + g; d = g + mu * buf; p -= lr * d.
  lr, mu, wd = 0.1, 0.9, 5e-4
  tx = optim.sgd(lr, momentum=mu, nesterov=True, weight_decay=wd)
  params = jnp.asarray([1.0, -2.0])
  state = tx.init(params)
  expected, buf = np.asarray(params, np.float64), np.zeros(2)
  for grad in ([0.5, 0.25], [-1.0, 2.0], [0.1, 0.1]):
    updates, state = tx.update(jnp.asarray(grad), state, params)
    params = params + updates
    g = np.asarray(grad) + wd * expected
    buf = mu * buf + g
    expected = expected - lr * (g + mu * buf)
  np.testing.assert_allclose(params, expected, rtol=1e-6)


@pytest.mark.parametrize('table', [
    ((1, 0.1), (2, 0.02)),
    ((0.3, 0.05), (0.7, 0.1), (2, 0.02)),  # Changes inside the first epoch.
    ((0.25, 0.3), (0.5, 0.2), (1.5, 0.1), (3, 0.01)),
])
@pytest.mark.parametrize('steps_per_epoch', [1, 7, 10])
def test_the_resume_check_reads_the_rates_the_optimiser_applies(
    table, steps_per_epoch):
  """The resume check compares the rates of the steps taken as
  ``optim.epoch_table_schedule`` gives them, end epochs that are not whole
  included (half an epoch of 7 steps rounds to step 4: Python rounds half
  to even, and int() would truncate to 3)."""
  steps = 3 * steps_per_epoch
  schedule = optim.epoch_table_schedule(table, steps_per_epoch)
  # pylint: disable-next=protected-access
  rates = resume._rates(table, steps_per_epoch, steps)
  np.testing.assert_allclose(
      rates, [float(schedule(step)) for step in range(steps)], rtol=1e-6)


_NETWORK = {'backbone': {'name': 'nin', 'num_blocks': 3}}


def _resume_inside_the_first_epoch(table, steps_taken=4, steps_per_epoch=10):
  """Checks resuming, with `table`, from a checkpoint saved `steps_taken`
  steps into the first epoch of a run trained with ((1, 0.1), (2, 0.02));
  raises InputError where the check refuses."""
  saved = run_files.resolved_config(tiny_config(
      num_epochs=2, learning_rate_table=((1, 0.1), (2, 0.02))))
  meta = {'network': _NETWORK, 'config': saved, 'epoch': 0,
          'epoch_step': steps_taken, 'step': steps_taken}
  current = run_files.resolved_config(tiny_config(
      num_epochs=2, learning_rate_table=table))
  # pylint: disable-next=protected-access
  resume._check_resumable(meta, _NETWORK, current, '/run/checkpoints/4',
                          steps_per_epoch)


@pytest.mark.parametrize('table', [
    ((1, 0.1), (2, 0.02)),  # The same.
    ((1, 0.1), (2, 0.05)),  # Another rate for the second epoch.
    # Another rate from step 4 on: the first step not taken yet.
    ((0.4, 0.1), (1, 0.05), (2, 0.02)),
])
def test_resuming_in_the_first_epoch_accepts_new_rates_for_steps_to_come(
    table):
  _resume_inside_the_first_epoch(table)


@pytest.mark.parametrize('table', [
    ((1, 0.2), (2, 0.02)),  # Every step of the first epoch.
    ((0.3, 0.05), (1, 0.1), (2, 0.02)),  # Steps 0 to 2.
    # Step 3 alone: the last step taken before the checkpoint.
    ((0.3, 0.1), (0.4, 0.2), (1, 0.1), (2, 0.02)),
])
def test_resuming_in_the_first_epoch_refuses_new_rates_for_steps_taken(
    table):
  """Steps taken with other rates than `table` gives them: the
  checkpoint is one this config would not have written. Inside the first
  epoch no whole epoch was trained yet; the steps taken still count."""
  with pytest.raises(InputError, match=r'learning_rate_table: checkpoint '
                     r'\[\[1, 0.1\], \[2, 0.02\]\]'):
    _resume_inside_the_first_epoch(table)
