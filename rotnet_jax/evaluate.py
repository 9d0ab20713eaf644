"""Classifiers on the features of a pretrained RotNet (``mode='evaluate'``).

    python main.py --config=configs/eval_multlayer.py --workdir=EVAL_DIR \\
        --config.pretrained=PRETEXT_WORKDIR

Restores the backbone (parameters and BatchNorm statistics) from the pretext
run's Orbax checkpoint, freezes it (BatchNorm in inference mode, gradients
stopped) and trains one head per requested block (``conv1``..``convN``) on
its features, all from one forward pass of the backbone. With
``finetune=True`` the backbone trains together with the head instead. The
same sharded, jitted machinery as training (``loop.fit``) runs the epochs,
writes checkpoints, resumes, and writes ``results.json``.

This module reads checkpoints; it never imports the training module.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rotnet_jax import checkpoint as checkpoint_lib
from rotnet_jax import config_schema
from rotnet_jax import data as data_lib
from rotnet_jax import loop
from rotnet_jax import metrics as metrics_lib
from rotnet_jax import models
from rotnet_jax import optim
from rotnet_jax import parallel
from rotnet_jax.data import transforms
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.loop import TrainState
from rotnet_jax.models import heads as heads_lib
from rotnet_jax.models import nin

RANDOM_BACKBONE = 'random'


def _abstract_variables(spec, mesh) -> dict[str, Any]:
  """Shapes of the backbone's variables, with replicated shardings."""
  abstract = nnx.eval_shape(
      lambda: models.build_backbone(spec, rngs=nnx.Rngs(0)))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      models.variables(abstract))


def _pretrained_checkpoint(config) -> tuple[checkpoint_lib.Checkpointer, int]:
  """The pretext run's checkpoints and the step to restore, checked."""
  workdir = os.path.abspath(os.path.expanduser(config.pretrained))
  if not os.path.isdir(workdir):
    raise MissingInputError(
        f'config.pretrained={config.pretrained!r}: {workdir} does not exist. '
        'Pass the --workdir of a pretext run (or "random").')
  if not os.path.isdir(checkpoint_lib.checkpoint_dir(workdir)):
    raise MissingInputError(
        f'config.pretrained={config.pretrained!r} has no checkpoints '
        f'({checkpoint_lib.checkpoint_dir(workdir)} is missing): train the '
        'pretext run there first.')
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  steps = checkpoints.all_steps()
  if not steps:
    raise MissingInputError(
        f'{checkpoints.directory} holds no finished checkpoint: train the '
        'pretext run there first.')
  step = config.pretrained_step or max(steps)
  if step not in steps:
    raise MissingInputError(
        f'config.pretrained_step={step} is not among the checkpoints of '
        f'{checkpoints.directory}: {sorted(steps)}')
  return checkpoints, step


def load_backbone(config, mesh) -> tuple[dict[str, Any], dict[str, Any],
                                         dict[str, Any]]:
  """The backbone to evaluate: restored from ``config.pretrained``.

  Returns:
    ``(spec, variables, origin)``: the network spec, its
    ``{'params', 'batch_stats'}`` replicated on `mesh`, and a description
    of where it came from (for results and resume checks).

  Raises:
    MissingInputError: no such workdir, no checkpoint, no such step.
    InputError: the checkpoint's network is not the one ``config.model``
      describes (naming the arrays whose shapes differ).
  """
  if config.pretrained == RANDOM_BACKBONE:
    spec = models.backbone_spec(config.model, image_size=config.image_size,
                                num_classes=len(config.rotations))
    init = jax.jit(lambda: models.variables(models.build_backbone(
        spec, rngs=nnx.Rngs(config.seed))),
                   out_shardings=parallel.replicated(mesh))
    return spec, init(), {'pretrained': RANDOM_BACKBONE,
                          'pretrained_seed': config.seed}
  checkpoints, step = _pretrained_checkpoint(config)
  saved_spec = checkpoints.read_meta(step)['network']['backbone']
  # The head count of the pretext classifier comes from the checkpoint (4
  # rotations, or 2 or 8); the rest must match this config.
  spec = models.backbone_spec(config.model, image_size=config.image_size,
                              num_classes=saved_spec['num_classes'])
  target = _abstract_variables(spec, mesh)
  saved_shapes = checkpoints.model_shapes(step)
  wanted = checkpoint_lib.flat_shapes(target)
  # Parameters first: they say more than the BatchNorm statistics.
  paths = sorted(set(saved_shapes) | set(wanted),
                 key=lambda k: (not k.startswith('params'), k))
  differ = [f"{k}: checkpoint {saved_shapes.get(k, 'absent')} vs config "
            f"{wanted.get(k, 'absent')}"
            for k in paths if saved_shapes.get(k) != wanted.get(k)]
  if differ or saved_spec != spec:
    checkpoints.close()
    raise InputError(
        f'the checkpoint in {checkpoints.directory} (step {step}) is a '
        f'{saved_spec}, but this config describes {spec}. Pass the pretext '
        f"run's shape: --config.model.num_blocks={saved_spec['num_blocks']} "
        f"--config.model.width={saved_spec['width']} "
        f"--config.image_size={saved_spec['image_size']}. Differing arrays: "
        + ('; '.join(differ[:6]) or 'none') +
        (f' (and {len(differ) - 6} more)' if len(differ) > 6 else ''))
  variables = checkpoints.restore(step, model=target)['model']
  checkpoints.close()
  pretext_workdir = os.path.dirname(checkpoints.directory)
  return spec, variables, {'pretrained': pretext_workdir,
                           'pretrained_step': step}


def head_blocks(config, block_names) -> tuple[str, ...]:
  """The blocks to train heads on, checked against the backbone's."""
  blocks = tuple(config.blocks) or tuple(block_names)
  unknown = [b for b in blocks if b not in block_names]
  if unknown:
    raise InputError(f'config.blocks={tuple(config.blocks)}: the backbone has '
                     f'no {unknown}; valid blocks: {list(block_names)}')
  if config.finetune and len(blocks) != 1:
    raise InputError('finetune=True trains the backbone with one head: set '
                     f'config.blocks to one of {list(block_names)}')
  return blocks


class Classifiers:
  """The backbone and one head per block, as static structure (graphdefs).

  Attributes:
    blocks: the blocks with a head, in order.
    finetune: whether the backbone trains too.
    deepest_block: where the backbone's forward pass stops.
  """

  def __init__(self, config, spec, blocks, num_classes: int):
    dtype = models.compute_dtype(config.half_precision)
    self.blocks = blocks
    self.finetune = config.finetune
    self.deepest_block = max(blocks, key=lambda name: int(name[4:]))
    abstract_backbone = nnx.eval_shape(
        lambda: models.build_backbone(spec, dtype=dtype, rngs=nnx.Rngs(0)))
    self.backbone_graphdef = nnx.graphdef(abstract_backbone)
    feature_shapes = self._feature_shapes(abstract_backbone, spec)
    channels = nin.scaled_channels(192, spec['width'])

    def make_heads(rngs):
      return {block: heads_lib.make_head(
          config.head, feature_shapes[block], num_classes, channels=channels,
          pool_size=config.linear_pool_size, dtype=dtype, rngs=rngs)
              for block in blocks}

    self._make_heads = make_heads
    self.head_graphdefs = {
        block: nnx.graphdef(head)
        for block, head in nnx.eval_shape(lambda: make_heads(
            nnx.Rngs(0))).items()}

  def _feature_shapes(self, abstract_backbone, spec):
    size = spec['image_size']
    graphdef, state = nnx.split(abstract_backbone)
    _, features = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return {name: f.shape[1:] for name, f in features.items()}

  def init_heads(self, seed: int) -> dict[str, Any]:
    """``{'params': {block: ...}, 'batch_stats': {block: ...}}`` of new heads."""
    heads = self._make_heads(nnx.Rngs(seed))
    variables = {block: models.variables(head) for block, head in heads.items()}
    return {'params': {b: v['params'] for b, v in variables.items()},
            'batch_stats': {b: v['batch_stats'] for b, v in variables.items()}}

  def __call__(self, params, batch_stats, frozen, inputs, *, train: bool):
    """Logits of every head, and the updated BatchNorm statistics.

    Args:
      params, batch_stats: the trained variables: ``{'heads': ...}`` plus
        ``'backbone'`` when fine-tuning.
      frozen: ``{'params', 'batch_stats'}`` of the frozen backbone (unused
        when fine-tuning).
      inputs: normalised images.
      train: BatchNorm mode of the trained parts.
    """
    # Blocks after the deepest head are not run: no wasted compute, and
    # when fine-tuning their BatchNorm statistics stay as restored.
    if self.finetune:
      backbone = nnx.merge(self.backbone_graphdef, params['backbone'],
                           batch_stats['backbone'])
      _, features = backbone(inputs, train=train, up_to=self.deepest_block)
      new_stats = {'backbone': nnx.to_pure_dict(
          nnx.state(backbone, nnx.BatchStat))}
    else:
      backbone = nnx.merge(self.backbone_graphdef, frozen['params'],
                           frozen['batch_stats'])
      _, features = backbone(inputs, train=False, up_to=self.deepest_block)
      features = jax.lax.stop_gradient(features)
      new_stats = {}
    logits, head_stats = {}, {}
    for block in self.blocks:
      head = nnx.merge(self.head_graphdefs[block], params['heads'][block],
                       batch_stats['heads'][block])
      logits[block] = head(features[block], train=train)
      head_stats[block] = nnx.to_pure_dict(nnx.state(head, nnx.BatchStat))
    new_stats['heads'] = head_stats
    return logits, new_stats


def _losses(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def jit_steps(config, classifiers: Classifiers, tx, mesh, train_source,
              test_source):
  """The compiled ``train_fn``/``eval_fn`` of ``loop.fit``.

  ``constants`` is ``{'train', 'test'}`` (the sources' resident data) and
  ``'frozen'`` (the frozen backbone's variables).
  """
  norm = (tuple(config.mean_rgb), tuple(config.std_rgb),
          models.compute_dtype(config.half_precision))

  def train_fn(state, constants, inputs, step):
    del step  # Heads need no per-step randomness.
    batch = train_source.materialize(constants['train'], inputs)
    images = transforms.normalize(batch['image'], *norm)
    weights = batch['mask']
    total = jnp.maximum(jnp.sum(weights), 1.0)

    def loss_fn(params):
      logits, new_stats = classifiers(params, state.batch_stats,
                                      constants['frozen'], images, train=True)
      losses = {b: _losses(l, batch['label']) for b, l in logits.items()}
      # Heads share no parameters: the sum trains each on its own loss.
      loss = sum(jnp.sum(l * weights) for l in losses.values()) / total
      return loss, (logits, losses, new_stats)

    grads, (logits, losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = {b: metrics_lib.weighted_sums(logits[b], batch['label'], losses[b], weights)
            for b in logits}
    return TrainState(params, batch_stats, opt_state), sums

  def eval_fn(state, constants, inputs):
    batch = test_source.materialize(constants['test'], inputs)
    images = transforms.normalize(batch['image'], *norm)
    logits, _ = classifiers(state.params, state.batch_stats,
                            constants['frozen'], images, train=False)
    return {b: metrics_lib.weighted_sums(l, batch['label'], _losses(l, batch['label']),
                             batch['mask']) for b, l in logits.items()}

  replicated = parallel.replicated(mesh)
  return (jax.jit(train_fn, donate_argnums=0, out_shardings=replicated),
          jax.jit(eval_fn, out_shardings=replicated))


def evaluate_pretrained(config, workdir: str, *, mesh=None
                        ) -> tuple[TrainState, dict[str, Any]]:
  """Trains and evaluates classifier heads on a pretrained backbone.

  Args:
    config: a config with ``mode='evaluate'`` (see ``configs/eval_*.py``).
    workdir: this evaluation's output folder (checkpoints of the heads,
      metrics, ``results.json``); re-running resumes.
    mesh: the data mesh (default: every device of every process).

  Returns:
    ``(state, frozen)``: the trained state and the frozen backbone's
    variables (unchanged by training; empty when fine-tuning).
  """
  config_schema.validate(config)
  if config.mode != 'evaluate':
    raise config_schema.ConfigError(
        f"evaluate_pretrained needs mode='evaluate', not {config.mode!r}")
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  spec, backbone, origin = load_backbone(config, mesh)
  blocks = head_blocks(config, [f'conv{i + 1}'
                                for i in range(spec['num_blocks'])])
  train_source = data_lib.make_source(config, config.train_split, mesh,
                                      train=True)
  test_source = data_lib.make_source(config, config.test_split, mesh,
                                     train=False)
  classifiers = Classifiers(config, spec, blocks, train_source.num_classes)
  tx = optim.from_config(config, train_source.steps_per_epoch)

  def init(backbone):
    heads = classifiers.init_heads(config.seed)
    params = {'heads': heads['params']}
    batch_stats = {'heads': heads['batch_stats']}
    if config.finetune:
      params['backbone'] = backbone['params']
      batch_stats['backbone'] = backbone['batch_stats']
    return TrainState(params, batch_stats, tx.init(params))

  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(backbone)
  frozen = {} if config.finetune else backbone
  train_fn, eval_fn = jit_steps(config, classifiers, tx, mesh, train_source,
                                test_source)
  network = {'backbone': spec, 'head': config.head, 'blocks': list(blocks),
             'finetune': config.finetune, **origin,
             'num_classes': train_source.num_classes}
  extra = {block: {'block': block, 'head_type': config.head,
                   'finetune': config.finetune, 'dataset': config.dataset,
                   'pipeline': config.pipeline, **origin}
           for block in blocks}
  state = loop.fit(
      config, workdir, network=network, state=state, train_fn=train_fn,
      eval_fn=eval_fn,
      constants={'train': train_source.resident,
                 'test': test_source.resident, 'frozen': frozen},
      train_source=train_source, test_source=test_source, mesh=mesh,
      images_per_step=config.batch_size, extra_results=extra)
  return state, frozen

