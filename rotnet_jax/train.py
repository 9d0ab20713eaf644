"""Training a whole network: the RotNet pretext task, or supervised classes.

One functional step, ``jax.jit``-compiled over a 1-D ``data`` mesh: the
batch arrives as a global uint8 array split over the devices (or is gathered
on device from a resident copy), is normalised and turned into the task's
inputs and labels (four rotated copies of every image for the pretext task;
the class labels for ``mode='supervised'``), run through the NIN, and the
SGD update is applied to replicated parameters. The same code runs on 1 or
N devices and on several hosts. ``loop.fit`` runs the epochs.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rotnet_jax import config_schema
from rotnet_jax import data as data_lib
from rotnet_jax import loop
from rotnet_jax import metrics as metrics_lib
from rotnet_jax import models
from rotnet_jax import optim
from rotnet_jax import parallel
from rotnet_jax import rotation
from rotnet_jax.data import transforms
from rotnet_jax.loop import TrainState

# Folded into the run seed for the random rotations of rotation_mode='random'.
_TASK_STREAM = 0x7461736B


class Task:
  """Turns a batch into network inputs, labels and per-sample weights.

  Attributes:
    name: the head name in metrics (``rotation`` or ``classifier``).
    num_classes: network outputs.
    inputs_per_image: samples a training image becomes (4 for all
      rotations, else 1), for images/s.
  """

  def __init__(self, config, num_dataset_classes: int):
    self._mode = config.mode
    self._angles = tuple(config.rotations)
    self._random = config.rotation_mode == 'random'
    self._seed = config.seed
    self._norm = (tuple(config.mean_rgb), tuple(config.std_rgb),
                  models.compute_dtype(config.half_precision))
    if self._mode == 'pretext':
      self.name, self.num_classes = 'rotation', len(self._angles)
      self.inputs_per_image = 1 if self._random else len(self._angles)
    else:
      self.name, self.num_classes = 'classifier', num_dataset_classes
      self.inputs_per_image = 1

  def __call__(self, batch, step, *, train: bool):
    """Returns ``(inputs, labels, weights)``; runs inside jit.

    Evaluation always scores every rotation of every test image.
    """
    images = transforms.normalize(batch['image'], *self._norm)
    if self._mode == 'supervised':
      return images, batch['label'], batch['mask']
    if train and self._random:
      key = jax.random.fold_in(
          jax.random.fold_in(jax.random.key(self._seed), _TASK_STREAM), step)
      images, labels = rotation.rotate_randomly(images, key, self._angles)
      return images, labels, batch['mask']
    images, labels = rotation.rotate_all(images, self._angles)
    weights = rotation.repeat_per_rotation(batch['mask'], len(self._angles))
    return images, labels, weights


def create_train_state(config, spec, tx: optax.GradientTransformation,
                       mesh) -> tuple[nnx.GraphDef, TrainState]:
  """Initialises the network and optimiser, replicated over `mesh`.

  Returns:
    ``(graphdef, state)``: the network's static structure and its arrays.
  """
  dtype = models.compute_dtype(config.half_precision)

  def init():
    model = models.variables(models.build_backbone(
        spec, dtype=dtype, rngs=nnx.Rngs(config.seed)))
    return TrainState(model['params'], model['batch_stats'],
                      tx.init(model['params']))

  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: models.build_backbone(spec, dtype=dtype, rngs=nnx.Rngs(0))))
  # Initialising under jit with a replicated output makes every host
  # compute the same values in place, without a host-to-device copy.
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
  return graphdef, state


def train_step(state: TrainState, batch, step, *, graphdef, tx, task
               ) -> tuple[TrainState, dict[str, Any]]:
  """One SGD step of the whole network on `task`.

  Args:
    state: parameters, BatchNorm statistics and optimiser state.
    batch: ``{'image': uint8 [B, H, W, 3], 'label', 'mask': f32 [B]}``;
      the mask weights each image's samples in the loss.
    step: global step (seeds the random rotations).

  Returns:
    The new state and ``{task.name: weighted metric sums}``.
  """
  inputs, labels, weights = task(batch, step, train=True)

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
  return (TrainState(params, batch_stats, opt_state),
          {task.name: metrics_lib.weighted_sums(logits, labels, losses, weights)})


def eval_step(state: TrainState, batch, *, graphdef, task
              ) -> dict[str, Any]:
  """Loss and accuracy of a batch, BatchNorm in inference mode."""
  inputs, labels, weights = task(batch, 0, train=False)
  model = nnx.merge(graphdef, state.params, state.batch_stats)
  logits, _ = model(inputs, train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {task.name: metrics_lib.weighted_sums(logits, labels, losses, weights)}


def jit_steps(graphdef, tx, task, mesh, train_source, test_source):
  """The compiled ``train_fn``/``eval_fn`` of ``loop.fit``.

  ``constants`` is ``{'train': ..., 'test': ...}``, the sources' resident
  data. Each source's ``materialize`` runs inside the compiled step, so the
  device-resident source's gather and augmentation fuse with the step. The
  state is donated: its buffers are reused for the new state.
  """
  replicated = parallel.replicated(mesh)

  def train_fn(state, constants, inputs, step):
    batch = train_source.materialize(constants['train'], inputs)
    return train_step(state, batch, step, graphdef=graphdef, tx=tx,
                      task=task)

  def eval_fn(state, constants, inputs):
    batch = test_source.materialize(constants['test'], inputs)
    return eval_step(state, batch, graphdef=graphdef, task=task)

  return (jax.jit(train_fn, donate_argnums=0, out_shardings=replicated),
          jax.jit(eval_fn, out_shardings=replicated))


def train_and_evaluate(config, workdir: str, *, mesh=None) -> TrainState:
  """Trains the network of `config` (``mode`` pretext or supervised).

  Args:
    config: a config built on ``config_schema.defaults()``.
    workdir: output folder: ``checkpoints/``, ``config.json``,
      ``metrics.jsonl``, ``results.json``, ``tensorboard/``. Re-running with
      the same workdir resumes from its latest checkpoint.
    mesh: the data mesh (default: every device of every process).

  Returns:
    The final train state.
  """
  # Everything that can fail on bad input runs before any checkpoint is
  # touched: config, mesh and batch size, both data sources.
  config_schema.validate(config)
  if config.mode not in ('pretext', 'supervised'):
    raise config_schema.ConfigError(
        f"train_and_evaluate runs mode 'pretext' or 'supervised', not "
        f'{config.mode!r}')
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  train_source = data_lib.make_source(config, config.train_split, mesh,
                                      train=True)
  test_source = data_lib.make_source(config, config.test_split, mesh,
                                     train=False)
  task = Task(config, train_source.num_classes)
  spec = models.backbone_spec(config.model, image_size=config.image_size,
                              num_classes=task.num_classes)
  tx = optim.from_config(config, train_source.steps_per_epoch)
  graphdef, state = create_train_state(config, spec, tx, mesh)
  train_fn, eval_fn = jit_steps(graphdef, tx, task, mesh, train_source,
                                test_source)
  extra = {task.name: {'block': None, 'head_type': task.name,
                       'dataset': config.dataset, 'pipeline': config.pipeline,
                       'rotations': list(config.rotations)
                       if config.mode == 'pretext' else None}}
  return loop.fit(
      config, workdir, network={'backbone': spec}, state=state,
      train_fn=train_fn, eval_fn=eval_fn,
      constants={'train': train_source.resident,
                 'test': test_source.resident},
      train_source=train_source, test_source=test_source, mesh=mesh,
      images_per_step=config.batch_size * task.inputs_per_image,
      extra_results=extra)

