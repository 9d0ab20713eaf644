"""The one train step and the one eval step, for any objective.

Each step is one ``jax.jit`` program over the 1-D ``data`` mesh: the batch
arrives as a global uint8 array split over the devices (or is gathered on
device from a resident copy of the dataset: the source's ``materialize``
runs inside the step, so gathering and augmentation fuse with it), is
normalised, and goes through the objective (rotations, network, heads).
Parameters are replicated; the gradient mean and BatchNorm statistics are
then over the global batch with no explicit collectives.

Both steps return, per head, the sample-weighted metric *sums*
(``Objective.metric_sums``) so that padded samples count for nothing; the
objective also says what each head's loss is (``Objective.losses``).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import transforms
from rotnet_jax.training.objectives import Objective


@struct.dataclass
class TrainState:
  """Everything a train step updates, as plain nested dicts of arrays (so
  checkpoints do not depend on Flax's module classes)."""
  params: Any
  batch_stats: Any
  opt_state: Any


@struct.dataclass
class Constants:
  """What the steps read but never change.

  Attributes:
    train_data, test_data: the sources' device-resident data (``{}`` for
      tf.data, whose batches arrive whole).
    objective: the objective's constants (a frozen backbone).
  """
  train_data: Any
  test_data: Any
  objective: Any


def init_state(objective: Objective, tx: optax.GradientTransformation,
               seed: int, mesh) -> TrainState:
  """The objective's fresh variables and optimiser state, replicated.

  Initialising under jit with a replicated output makes every host compute
  the same values in place, without a host-to-device copy.
  """
  def init(constants):
    params, batch_stats = objective.init(seed, constants)
    return TrainState(params, batch_stats, tx.init(params))

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(
      objective.constants)


def train_step(state: TrainState, batch, step, constants, *,
               objective: Objective, tx: optax.GradientTransformation,
               normalization) -> tuple[TrainState, dict[str, Any]]:
  """One SGD step on the objective's loss.

  Args:
    state: trained variables and optimiser state.
    batch: ``{'image': uint8 [B, H, W, 3], 'label', 'mask': f32 [B]}``.
    step: global step (seeds per-step randomness).
    constants: the objective's constants.
    objective: what is trained.
    tx: the optimiser.
    normalization: ``(mean_rgb, std_rgb, dtype)`` of the input images.

  Returns:
    The new state and ``{head: weighted metric sums}``.
  """
  batch = dict(batch, image=transforms.normalize(batch['image'],
                                                 *normalization))

  def loss_fn(params):
    output = objective.apply(params, state.batch_stats, constants, batch,
                             step, train=True)
    losses = objective.losses(output)
    # Heads share no parameters: the sum trains each on its own loss.
    total = jnp.maximum(jnp.sum(output.weights), 1.0)
    loss = sum(jnp.sum(l * output.weights) for l in losses.values()) / total
    return loss, (output, losses)

  grads, (output, losses) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return (TrainState(params, output.batch_stats, opt_state),
          objective.metric_sums(output, losses, train=True))


def eval_step(state: TrainState, batch, constants, *, objective: Objective,
              normalization) -> dict[str, Any]:
  """Per-head weighted loss and metric sums, BatchNorm in inference mode."""
  batch = dict(batch, image=transforms.normalize(batch['image'],
                                                 *normalization))
  output = objective.apply(state.params, state.batch_stats, constants, batch,
                           0, train=False)
  return objective.metric_sums(output, objective.losses(output), train=False)


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """The jitted steps with their constants bound.

  Attributes:
    train_fn: ``(state, constants, inputs, step) -> (state, sums)``; the
      state is donated (its buffers are reused for the new state).
    eval_fn: ``(state, constants, inputs) -> sums``.
    constants: the :class:`Constants` passed to both.
    sync_every_step: wait for each step (several fake CPU devices only).
  """
  train_fn: Any
  eval_fn: Any
  constants: Constants
  sync_every_step: bool

  def train(self, state: TrainState, inputs, step: int):
    """One train step on the source's `inputs`."""
    return self.train_fn(state, self.constants, inputs, step)

  def evaluate(self, state: TrainState, inputs):
    """Metric sums of one evaluation batch."""
    return self.eval_fn(state, self.constants, inputs)


def needs_sync_every_step(mesh) -> bool:
  """Whether to wait for each step (several fake CPU devices only).

  Several CPU devices in one process can deadlock XLA when several
  collective programs are in flight at once (see docs/architecture.md,
  "Pitfalls"). Waiting costs nothing measurable on CPU; GPUs and TPUs keep
  running ahead.
  """
  return jax.default_backend() == 'cpu' and mesh.devices.size > 1


def compile_steps(config, objective: Objective,
                  tx: optax.GradientTransformation, mesh, train_source,
                  test_source) -> CompiledSteps:
  """Jits the train and eval steps of `objective` over `mesh`.

  Args:
    config: ``mean_rgb``, ``std_rgb``, ``half_precision`` and
      ``float64``.
    objective: what is trained.
    tx: the optimiser.
    mesh: the data mesh; the outputs are replicated over it.
    train_source, test_source: their ``materialize`` runs inside the
      steps.
  """
  normalization = (tuple(config.mean_rgb), tuple(config.std_rgb),
                   models.compute_dtype(config.half_precision,
                                        config.float64))

  def train_fn(state, constants, inputs, step):
    batch = train_source.materialize(constants.train_data, inputs)
    return train_step(state, batch, step, constants.objective,
                      objective=objective, tx=tx, normalization=normalization)

  def eval_fn(state, constants, inputs):
    batch = test_source.materialize(constants.test_data, inputs)
    return eval_step(state, batch, constants.objective, objective=objective,
                     normalization=normalization)

  replicated = parallel.replicated(mesh)
  return CompiledSteps(
      train_fn=jax.jit(train_fn, donate_argnums=0, out_shardings=replicated),
      eval_fn=jax.jit(eval_fn, out_shardings=replicated),
      constants=Constants(train_source.resident, test_source.resident,
                          objective.constants),
      sync_every_step=needs_sync_every_step(mesh))
