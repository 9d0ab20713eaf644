"""The host-side weights type every weights format reads into.

:class:`Weights` is a backbone (and maybe its :class:`Heads`) as numpy
arrays in exactly the tree ``models.init_variables`` builds, whatever the
format it came from; the kind constants name those formats;
:func:`check_finite` is the check every reader makes of the values.
"""

import dataclasses
from typing import Any

import numpy as np

from rotnet_jax import config_schema
from rotnet_jax.errors import InputError

# The kinds of path ``weights.read`` accepts.
WORKDIR = 'workdir'
SAFETENSORS = 'safetensors'
TORCH = 'torch'
SAFETENSORS_SUFFIX = '.safetensors'
# ``config.pretrained`` for a randomly initialised backbone: no weights,
# hence no format; named in the formats' messages.
RANDOM = 'random'


@dataclasses.dataclass(frozen=True)
class Heads:
  """Classifier heads trained on blocks of a backbone.

  Attributes:
    head_type: a key of ``models.heads.HEADS``.
    blocks: the blocks with a head.
    num_classes: outputs of every head.
    variables: ``{'params': {block: ...}, 'batch_stats': {block: ...}}``,
      numpy arrays in the tree the head module builds.
  """
  head_type: str
  blocks: tuple[str, ...]
  num_classes: int
  variables: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Weights:
  """A backbone (and maybe heads), on the host.

  Attributes:
    spec: the backbone's spec (``models.backbone_spec``): what rebuilds it.
    variables: ``{'params', 'batch_stats'}`` of the backbone, numpy
      float32 arrays in the tree of ``models.init_variables(spec)``.
    origin: JSON-able, recorded in ``results.json`` and checkpoints:
      ``{'pretrained': absolute path, 'pretrained_format': kind,
      'pretrained_step': step or None}``.
    mean_rgb: per-channel mean (0..255 scale) the network's inputs were
      normalised with.
    std_rgb: the matching standard deviations.
    heads: classifier heads, when the path holds some (an evaluation
      workdir, or an imported official classifier).
  """
  spec: dict[str, Any]
  variables: dict[str, Any]
  origin: dict[str, Any]
  mean_rgb: tuple[float, float, float] = config_schema.CIFAR_MEAN_RGB
  std_rgb: tuple[float, float, float] = config_schema.CIFAR_STD_RGB
  heads: Heads | None = None


# Arrays named in one non-finite-weights message; the rest are counted.
_LISTED = 4


def _flat_items(tree, prefix: str = ''):
  """``(key, leaf)`` of a nested dict, keys joined by ``/``."""
  if not isinstance(tree, dict):
    yield prefix, tree
    return
  for key, value in tree.items():
    yield from _flat_items(value, f'{prefix}/{key}' if prefix else str(key))


def _non_finite(value: np.ndarray) -> str | None:
  """What non-finite values `value` holds (``'2 NaN, 1 +inf'``), or None."""
  if not np.issubdtype(value.dtype, np.inexact) or np.isfinite(value).all():
    return None
  counts = ((int(np.isnan(value).sum()), 'NaN'),
            (int(np.isposinf(value).sum()), '+inf'),
            (int(np.isneginf(value).sum()), '-inf'))
  return ', '.join(f'{n} {name}' for n, name in counts if n)


def check_finite(where: str, tree) -> None:
  """Raises InputError if an array of `tree` holds NaN or +-inf.

  Every weights reader calls it before it hands the weights on: a network
  with a NaN or an infinite weight computes NaN everywhere downstream (an
  evaluation would train its heads on NaN features and save them), so the
  file is refused where it is read, naming what is wrong with it.

  Args:
    where: the file read (and the step of a checkpoint), named first.
    tree: ``{key: array}``, flat or nested (keys are then joined by ``/``,
      as in an exported file).

  Raises:
    InputError: naming `where`, each bad array's key, and how many NaN,
      +inf and -inf values it holds.
  """
  bad = []
  for key, value in _flat_items(tree):
    value = np.asarray(value)
    found = _non_finite(value)
    if found:
      bad.append(f'{key} holds {found} (of {value.size} values)')
  if bad:
    raise InputError(
        f'{where}: non-finite weights: ' + '; '.join(bad[:_LISTED]) +
        (f' (and {len(bad) - _LISTED} more arrays)' if len(bad) > _LISTED
         else '') +
        '. A network with NaN or infinite weights computes nothing (a '
        'diverged run, or a damaged file?): use another checkpoint or file')
