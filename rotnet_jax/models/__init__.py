"""Backbones that return logits and a dict of named block features, and heads.

A backbone is described by a small JSON-able *spec* (saved with every
checkpoint), so an evaluation run rebuilds exactly the network it restores.
"""

from typing import Any

import jax.numpy as jnp
from flax import nnx

from rotnet_jax.models.nin import NIN


def variables(module: nnx.Module) -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` of `module` as plain dicts."""
  _, params, batch_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
  return {'params': nnx.to_pure_dict(params),
          'batch_stats': nnx.to_pure_dict(batch_stats)}


def compute_dtype(half_precision: bool) -> jnp.dtype:
  """bfloat16 activations for ``half_precision``; parameters stay float32."""
  return jnp.bfloat16 if half_precision else jnp.float32


def backbone_spec(model_config, *, image_size: int,
                  num_classes: int) -> dict[str, Any]:
  """The spec of the NIN described by ``config.model``."""
  return {'name': 'nin', 'num_classes': num_classes,
          'num_blocks': model_config.num_blocks, 'width': model_config.width,
          'image_size': image_size}


def build_backbone(spec: dict[str, Any], *, dtype=jnp.float32,
                   rngs: nnx.Rngs) -> NIN:
  """The network described by `spec`."""
  if spec['name'] != 'nin':
    raise ValueError(f"unknown backbone {spec['name']!r}; valid: 'nin'")
  return NIN(spec['num_classes'], num_blocks=spec['num_blocks'],
             width=spec['width'], dtype=dtype, rngs=rngs)


__all__ = ['NIN', 'backbone_spec', 'build_backbone', 'compute_dtype',
           'variables']
