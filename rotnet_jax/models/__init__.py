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
from rotnet_jax.models import alexnet
from rotnet_jax.models import heads
from rotnet_jax.models import nin
from rotnet_jax.models.backbone import Backbone

# The registry: config.model.name -> definition. One line per backbone.
BACKBONES: dict[str, Backbone] = {
    nin.NINBackbone.name: nin.NINBackbone(),
    alexnet.AlexNetBackbone.name: alexnet.AlexNetBackbone(),
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
      rejects (e.g. an image too small for it), a block the backbone does
      not have, a head on blocks it cannot read, or a linear pool side
      the features cannot give.
  """
  backbone = get_backbone(config.model.name)
  backbone.check_config(config.model)
  if (config.head not in heads.HEADS and
      config.head not in config_schema.TRAINING_FREE_HEADS):
    raise ConfigError(f'config.head={config.head!r}: must be one of '
                      f'{heads.HEAD_TYPES + config_schema.TRAINING_FREE_HEADS}')
  spec = backbone_spec(config.model, image_size=config.image_size,
                      num_classes=1)
  names = backbone.block_names(spec)
  unknown = [b for b in config.blocks if b not in names]
  if unknown:
    raise ConfigError(f'config.blocks={tuple(config.blocks)}: the backbone '
                      f'has no {unknown}; valid blocks: {list(names)}')
  if config.frozen_up_to and config.frozen_up_to not in names[:-1]:
    raise ConfigError(
        f'config.frozen_up_to={config.frozen_up_to!r}: must be one of '
        f"{list(names[:-1])} (the blocks up to it stay frozen) or '' "
        '(every layer trains)')
  if config.mode == 'transfer':
    _check_transfer(config, spec, names)
    return
  if config.mode != 'evaluate':
    return
  if config.finetune and len(config.blocks) != 1:
    raise ConfigError('config.finetune=True trains the backbone with one '
                      f'head: set config.blocks to one of {list(names)}')
  if config.head == 'alexnet_nonlinear':
    valid = tuple(heads.ALEXNET_NONLINEAR_BLOCKS)
    if spec['name'] != alexnet.AlexNetBackbone.name:
      raise ConfigError(
          f"config.head='alexnet_nonlinear' is AlexNet's non-linear "
          f"classifier, but config.model.name={spec['name']!r}: use "
          "head='multlayer' or 'conv_block' for it")
    if not config.blocks or any(b not in valid for b in config.blocks):
      raise ConfigError(
          f"config.blocks={tuple(config.blocks)}: head='alexnet_nonlinear' "
          f'reads {valid} only (the official classifiers): set '
          "config.blocks to ('conv4',), ('conv5',) or both")
  if config.head == 'linear' and config.linear_pool_size == 0:
    if backbone.linear_pool_sizes(spec) is None:
      raise ConfigError(
          f'config.linear_pool_size=0 selects the backbone\'s own pool side '
          f"for each block, and the {spec['name']} backbone has none: set a "
          'side, e.g. --config.linear_pool_size=6')
  elif config.head == 'linear':
    shapes = backbone.feature_shapes(spec)
    side = min(min(shapes[b][:2]) for b in config.blocks or names)
    if config.linear_pool_size > side:
      raise ConfigError(
          f'config.linear_pool_size={config.linear_pool_size}: the linear '
          f'head pools each feature map to this side, but the smallest '
          f'feature map it reads is {side}x{side}: use at most {side}')


def _check_transfer(config, spec, names) -> None:
  """``mode='transfer'``: the network it can fine-tune."""
  if spec['name'] != alexnet.AlexNetBackbone.name:
    raise ConfigError(
        f"config.mode='transfer' fine-tunes an AlexNet on PASCAL VOC (the "
        f"paper's protocol), but config.model.name={spec['name']!r}: use an "
        'AlexNet RotNet (configs/imagenet_rotnet_alexnet.py)')


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
  """What heads on the network of `spec` need from it.

  ``linear_pool_size=0`` selects the backbone's own side for each block
  (``Backbone.linear_pool_sizes``); the head finds its block as
  ``heads.HeadOptions`` says.
  """
  backbone = get_backbone(spec['name'])
  sizes = backbone.linear_pool_sizes(spec) or {}
  return heads.HeadOptions(
      make_block=functools.partial(backbone.head_block, spec),
      linear_pool_size=linear_pool_size,
      linear_pool_sizes=tuple(sizes.items()),
      feature_shapes=tuple(backbone.feature_shapes(spec).items()),
      backbone=spec['name'], width=float(spec.get('width', 1.0)))


def variables(module: nnx.Module) -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` of `module` as plain dicts."""
  _, params, batch_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
  return {'params': nnx.to_pure_dict(params),
          'batch_stats': nnx.to_pure_dict(batch_stats)}


def init_variables(spec: dict[str, Any], seed: int, *,
                   bn_scale_init: str = 'ones',
                   dtype=jnp.float32) -> dict[str, Any]:
  """Freshly initialised ``{'params', 'batch_stats'}`` of `spec`'s network.

  Pure: call it under ``jax.jit`` with replicated output shardings, so
  every host computes the same values in place.

  Args:
    spec: the network.
    seed: of every random draw.
    bn_scale_init: ``'ones'``, or ``'uniform'``: every BatchNorm scale
      drawn from U(0, 1), as PyTorch 0.2's ``BatchNorm2d`` started in the
      official RotNet runs (config ``model.bn_scale_init``).
    dtype: of every variable (:func:`param_dtype`). The draws are always
      float32 and then cast, so a float64 network starts from exactly the
      float32 network's values.
  """
  module = build_backbone(spec, rngs=nnx.Rngs(seed))
  if bn_scale_init == 'uniform':
    _uniform_batch_norm_scales(module, jax.random.key(seed))
  elif bn_scale_init != 'ones':
    raise ValueError(f'bn_scale_init={bn_scale_init!r}; valid: '
                     "'uniform', 'ones'")
  return cast_variables(variables(module), dtype)


def cast_variables(tree, dtype=jnp.float32):
  """`tree` with every floating-point array in `dtype` (others unchanged)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def _uniform_batch_norm_scales(module: nnx.Module, key: jax.Array) -> None:
  # Its own key stream: the other parameters stay what 'ones' gives.
  key = jax.random.fold_in(key, 0x626E)
  norms = [m for _, m in nnx.iter_graph(module)
           if isinstance(m, nnx.BatchNorm) and m.scale is not None]
  for index, norm in enumerate(norms):
    scale = norm.scale[...]
    norm.scale[...] = jax.random.uniform(jax.random.fold_in(key, index),
                                         scale.shape, scale.dtype)


def abstract_variables(spec: dict[str, Any], sharding=None,
                       dtype=jnp.float32) -> dict[str, Any]:
  """Shapes and dtypes of :func:`init_variables`, nothing computed."""
  abstract = variables(nnx.eval_shape(
      lambda: build_backbone(spec, rngs=nnx.Rngs(0))))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating)
          else x.dtype, sharding=sharding),
      abstract)


def compute_dtype(half_precision: bool, float64: bool = False) -> jnp.dtype:
  """The dtype of activations (and of the normalised images).

  bfloat16 for ``half_precision`` (parameters stay float32), float64 for
  ``float64`` (parameters too, see :func:`param_dtype`), float32 otherwise.

  Raises:
    ConfigError: both set, or ``float64`` without ``jax_enable_x64`` (JAX
      would then silently compute in float32).
  """
  if float64 and half_precision:
    raise ConfigError('config.float64=True and config.half_precision=True '
                      'ask for float64 and bfloat16 compute at once: set at '
                      'most one of them')
  if float64:
    if not jax.config.jax_enable_x64:
      raise ConfigError(
          'config.float64=True needs 64-bit JAX, which is off: set the '
          'environment variable JAX_ENABLE_X64=1 or call '
          "jax.config.update('jax_enable_x64', True) before the run")
    return jnp.float64
  return jnp.bfloat16 if half_precision else jnp.float32


def param_dtype(float64: bool = False) -> jnp.dtype:
  """The dtype of parameters, BatchNorm statistics and optimiser state.

  float32 unless ``config.float64`` (checked by :func:`compute_dtype`,
  which every run calls first).
  """
  return jnp.float64 if float64 else jnp.float32


__all__ = ['BACKBONES', 'Backbone', 'abstract_variables', 'backbone_graphdef',
           'backbone_spec', 'block_names', 'build_backbone', 'cast_variables',
           'check_config', 'compute_dtype', 'feature_shapes', 'get_backbone',
           'head_options', 'init_variables', 'param_dtype', 'variables']
