"""Backbones (a registry of :class:`Backbone` definitions) and heads.

A backbone returns logits and a dict of named block features; it is
described by a JSON-able *spec* (see ``models/backbone.py``), so an
evaluation run rebuilds exactly the network it restores. Everything outside
this package asks the registry, never a particular network.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rotnet_jax import config_schema
from rotnet_jax.errors import ConfigError
from rotnet_jax.models import heads
from rotnet_jax.models import nin
from rotnet_jax.models.backbone import Backbone

# The registry: config.model.name -> definition. One line per backbone.
BACKBONES: dict[str, Backbone] = {
    nin.NINBackbone.name: nin.NINBackbone(),
}


def get_backbone(name: str) -> Backbone:
  """The backbone registered as `name`.

  Raises:
    ConfigError: no such backbone (naming the registered ones).
  """
  if name not in BACKBONES:
    raise ConfigError(f'config.model.name={name!r}: no such backbone; '
                      f'valid: {tuple(BACKBONES)}')
  return BACKBONES[name]


def check_config(config) -> None:
  """The model and head keys of `config`, checked by their registries.

  Raises:
    ConfigError: an unknown backbone or head, a shape the backbone
      rejects, or a block the backbone does not have.
  """
  backbone = get_backbone(config.model.name)
  backbone.check_config(config.model)
  if (config.head not in heads.HEADS and
      config.head not in config_schema.TRAINING_FREE_HEADS):
    raise ConfigError(f'config.head={config.head!r}: must be one of '
                      f'{heads.HEAD_TYPES + config_schema.TRAINING_FREE_HEADS}')
  names = backbone.block_names(backbone_spec(
      config.model, image_size=config.image_size, num_classes=1))
  unknown = [b for b in config.blocks if b not in names]
  if unknown:
    raise ConfigError(f'config.blocks={tuple(config.blocks)}: the backbone '
                      f'has no {unknown}; valid blocks: {list(names)}')
  if config.mode != 'evaluate':
    return
  if config.finetune and len(config.blocks) != 1:
    raise ConfigError('config.finetune=True trains the backbone with one '
                      f'head: set config.blocks to one of {list(names)}')
  if config.head == 'linear':
    shapes = backbone.feature_shapes(backbone_spec(
        config.model, image_size=config.image_size, num_classes=1))
    side = min(min(shapes[b][:2]) for b in config.blocks or names)
    if config.linear_pool_size > side:
      raise ConfigError(
          f'config.linear_pool_size={config.linear_pool_size}: the linear '
          f'head pools each feature map to this side, but the smallest '
          f'feature map it reads is {side}x{side}: use at most {side}')


def backbone_spec(model_config, *, image_size: int,
                  num_classes: int) -> dict[str, Any]:
  """The spec of the backbone described by ``config.model``."""
  return get_backbone(model_config.name).spec(
      model_config, image_size=image_size, num_classes=num_classes)


def build_backbone(spec: dict[str, Any], *, dtype=jnp.float32,
                   rngs: nnx.Rngs) -> nnx.Module:
  """The network described by `spec`."""
  return get_backbone(spec['name']).build(spec, dtype=dtype, rngs=rngs)


def backbone_graphdef(spec: dict[str, Any], dtype) -> nnx.GraphDef:
  """The static structure of `spec`'s network computing in `dtype`."""
  return nnx.graphdef(nnx.eval_shape(
      lambda: build_backbone(spec, dtype=dtype, rngs=nnx.Rngs(0))))


def block_names(spec: dict[str, Any]) -> tuple[str, ...]:
  """The blocks of the network of `spec` whose features heads can read."""
  return get_backbone(spec['name']).block_names(spec)


def feature_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """``(H, W, C)`` of every block's features of the network of `spec`."""
  return get_backbone(spec['name']).feature_shapes(spec)


def head_options(spec: dict[str, Any], *, linear_pool_size: int
                 ) -> heads.HeadOptions:
  """What heads on the network of `spec` need from it."""
  return heads.HeadOptions(
      make_block=functools.partial(get_backbone(spec['name']).head_block,
                                   spec),
      linear_pool_size=linear_pool_size)


def variables(module: nnx.Module) -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` of `module` as plain dicts."""
  _, params, batch_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
  return {'params': nnx.to_pure_dict(params),
          'batch_stats': nnx.to_pure_dict(batch_stats)}


def init_variables(spec: dict[str, Any], seed: int, *,
                   bn_scale_init: str = 'ones') -> dict[str, Any]:
  """Freshly initialised ``{'params', 'batch_stats'}`` of `spec`'s network.

  Pure: call it under ``jax.jit`` with replicated output shardings, so
  every host computes the same values in place.

  Args:
    spec: the network.
    seed: of every random draw.
    bn_scale_init: ``'ones'``, or ``'uniform'``: every BatchNorm scale
      drawn from U(0, 1), as PyTorch 0.2's ``BatchNorm2d`` started in the
      official RotNet runs (config ``model.bn_scale_init``).
  """
  module = build_backbone(spec, rngs=nnx.Rngs(seed))
  if bn_scale_init == 'uniform':
    _uniform_batch_norm_scales(module, jax.random.key(seed))
  elif bn_scale_init != 'ones':
    raise ValueError(f'bn_scale_init={bn_scale_init!r}; valid: '
                     "'uniform', 'ones'")
  return variables(module)


def _uniform_batch_norm_scales(module: nnx.Module, key: jax.Array) -> None:
  # Its own key stream: the other parameters stay what 'ones' gives.
  key = jax.random.fold_in(key, 0x626E)
  norms = [m for _, m in nnx.iter_graph(module)
           if isinstance(m, nnx.BatchNorm) and m.scale is not None]
  for index, norm in enumerate(norms):
    scale = norm.scale[...]
    norm.scale[...] = jax.random.uniform(jax.random.fold_in(key, index),
                                         scale.shape, scale.dtype)


def abstract_variables(spec: dict[str, Any], sharding=None
                       ) -> dict[str, Any]:
  """Shapes and dtypes of :func:`init_variables`, nothing computed."""
  abstract = variables(nnx.eval_shape(
      lambda: build_backbone(spec, rngs=nnx.Rngs(0))))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract)


def compute_dtype(half_precision: bool) -> jnp.dtype:
  """bfloat16 activations for ``half_precision``; parameters stay float32."""
  return jnp.bfloat16 if half_precision else jnp.float32


__all__ = ['BACKBONES', 'Backbone', 'abstract_variables', 'backbone_graphdef',
           'backbone_spec', 'block_names', 'build_backbone', 'check_config',
           'compute_dtype', 'feature_shapes', 'get_backbone', 'head_options',
           'init_variables', 'variables']
