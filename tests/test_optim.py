"""The learning-rate table and PyTorch-style SGD."""

import jax.numpy as jnp
import numpy as np
import pytest

from rotnet_jax import config_schema
from rotnet_jax.training import optim


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
