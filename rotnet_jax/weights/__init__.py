"""Trained weights on the host, from any of the places they can come from.

A network's weights reach this package in one of three forms, each read by
its own module:

* a **workdir** of a run (its Orbax checkpoint and ``config.json``;
  ``workdir_format``): a pretext or supervised run gives a backbone; an
  evaluation run gives heads, plus the backbone its ``network`` names;
* an **exported file** (``*.safetensors``, written by
  ``rotnet_jax.export``; ``safetensors_format``);
* an **official PyTorch file** of FeatureLearningRotNet (``torch_format``;
  PyTorch is an optional extra).

:func:`read` turns any of them into one :class:`Weights` of numpy arrays,
in exactly the tree ``models.init_variables`` builds, so evaluation
(``--config.pretrained``), ``rotnet_jax.load``, export and feature
extraction need not know where the weights came from. :func:`read_spec`
says what network a path holds without reading its arrays (an official
file's tensors are loaded, but not converted).
"""

from typing import Any

from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.weights import safetensors_format
from rotnet_jax.weights import torch_format
from rotnet_jax.weights import types
from rotnet_jax.weights import workdir_format
from rotnet_jax.workdir import filesystem

# The weights type and the kinds of path, re-exported: the public names.
Weights = types.Weights
Heads = types.Heads
WORKDIR = types.WORKDIR
SAFETENSORS = types.SAFETENSORS
TORCH = types.TORCH
SAFETENSORS_SUFFIX = types.SAFETENSORS_SUFFIX
RANDOM = types.RANDOM


def kind(path: str) -> str:
  """Which of :data:`WORKDIR`, :data:`SAFETENSORS`, :data:`TORCH` `path` is.

  Raises:
    MissingInputError: nothing exists at `path`.
  """
  full = filesystem.absolute(path)
  if filesystem.resolve(full).is_dir():
    return WORKDIR
  if not filesystem.resolve(full).exists():
    raise MissingInputError(
        f'{path!r} does not exist: pass a run\'s workdir, a '
        f'{SAFETENSORS_SUFFIX} file written by rotnet_jax.export, or an '
        'official FeatureLearningRotNet PyTorch file')
  if full.endswith(SAFETENSORS_SUFFIX):
    return SAFETENSORS
  return TORCH


def pretrained_kind(pretrained: str) -> str:
  """:func:`kind` of what ``config.pretrained`` names (not ``'random'``).

  Raises:
    MissingInputError: nothing exists there (the message names the key).
  """
  path = filesystem.absolute(pretrained)
  if not filesystem.resolve(path).exists():
    raise MissingInputError(
        f'config.pretrained={pretrained!r}: {path} does not exist. Pass the '
        '--workdir of a pretext run, a .safetensors file written by '
        'rotnet_jax.export, an official FeatureLearningRotNet PyTorch file, '
        f'or "{RANDOM}".')
  return kind(path)


def _kind_with_step(path: str, step: int) -> str:
  """:func:`kind` of `path`, which must be a workdir if `step` is set."""
  path_kind = kind(path)
  if path_kind != WORKDIR and step:
    raise InputError(f'step={step} only applies to a workdir; {path!r} is a '
                     f'{path_kind} file (leave the step at 0)')
  return path_kind


def read(path: str, step: int = 0) -> Weights:
  """The weights at `path` (a workdir, an exported or an official file).

  Args:
    path: see the module docstring.
    step: for a workdir, the checkpoint step (0: the latest); must be 0
      for a file.

  Raises:
    MissingInputError: no such path, checkpoint or step.
    InputError: the path holds something else (naming it and what was
      expected).
  """
  path_kind = _kind_with_step(path, step)
  if path_kind == SAFETENSORS:
    return safetensors_format.read(path)
  if path_kind == TORCH:
    return torch_format.read(path)
  held = workdir_format.read(path, step)
  if isinstance(held, workdir_format.HeadsOnly):
    return _on_their_backbone(path, held)
  return held


def read_spec(path: str, step: int = 0) -> dict[str, Any]:
  """The backbone spec at `path`, reading no arrays where it can.

  Args and raises as :func:`read` (an error only the arrays would show is
  left to it).
  """
  path_kind = _kind_with_step(path, step)
  if path_kind == SAFETENSORS:
    return safetensors_format.read_spec(path)
  if path_kind == TORCH:
    return torch_format.read_spec(path)
  return workdir_format.read_spec(path, step)


def _on_their_backbone(path: str,
                       held: workdir_format.HeadsOnly) -> Weights:
  """An evaluation workdir's heads on the frozen backbone it names."""
  if held.pretrained in (None, RANDOM):
    raise InputError(
        f'{path} holds heads on a randomly initialised backbone '
        f'({held.pretrained!r}), whose weights were not saved: '
        'there is no backbone to load with them')
  backbone = read(held.pretrained, held.pretrained_step or 0)
  if backbone.spec != held.spec:
    raise InputError(
        f'{path}: its backbone {held.pretrained!r} now holds '
        f'{backbone.spec}, not the {held.spec} its heads were '
        'trained on')
  return held.on(backbone.variables, backbone.origin)
