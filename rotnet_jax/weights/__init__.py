"""Trained weights on the host, from any of the places they can come from.

A network's weights reach this package in one of three forms:

* a **workdir** of a run (its Orbax checkpoint and ``config.json``): a
  pretext or supervised run gives a backbone; an evaluation run gives
  heads, plus the backbone its ``network`` names;
* an **exported file** (``*.safetensors``, written by
  ``rotnet_jax.export``);
* an **official PyTorch file** of FeatureLearningRotNet (read by
  ``rotnet_jax.torch_import``; PyTorch is an optional extra).

:func:`read` turns any of them into one :class:`Weights` of numpy arrays,
in exactly the tree ``models.init_variables`` builds, so evaluation
(``--config.pretrained``), ``rotnet_jax.load``, export and feature
extraction need not know where the weights came from. :func:`read_spec`
says what network a path holds without reading its arrays.
"""

import dataclasses
from typing import Any

import numpy as np

from rotnet_jax import config_schema
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files

# The kinds of path :func:`read` accepts.
WORKDIR = 'workdir'
SAFETENSORS = 'safetensors'
TORCH = 'torch'
SAFETENSORS_SUFFIX = '.safetensors'


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
  path_kind = kind(path)
  if path_kind != WORKDIR and step:
    raise InputError(f'step={step} only applies to a workdir; {path!r} is a '
                     f'{path_kind} file (leave the step at 0)')
  if path_kind == WORKDIR:
    return _read_workdir(path, step)
  if path_kind == SAFETENSORS:
    from rotnet_jax.weights import export  # pylint: disable=g-import-not-at-top
    return export.read_exported(path)
  from rotnet_jax.weights import torch_import  # pylint: disable=g-import-not-at-top
  return torch_import.read_official(path)


def read_spec(path: str, step: int = 0) -> dict[str, Any]:
  """The backbone spec at `path`, reading no arrays where it can."""
  path_kind = kind(path)
  if path_kind == WORKDIR:
    network = _workdir_network(path, step)[2]
    return network['backbone']
  return read(path, step).spec


def _workdir_network(path: str, step: int):
  """``(checkpoints, step, network)`` of a workdir's checkpoint."""
  from rotnet_jax.weights import restore  # pylint: disable=g-import-not-at-top
  checkpoints, step = restore.pretrained_checkpoint(path, step)
  try:
    network = restore.read_checkpoint_part(
        checkpoints, step, 'its metadata',
        lambda: checkpoints.read_meta(step)['network'])
  except BaseException:
    checkpoints.close()
    raise
  return checkpoints, step, network


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def _read_workdir(path: str, step: int) -> Weights:
  from rotnet_jax.weights import restore  # pylint: disable=g-import-not-at-top
  checkpoints, step, network = _workdir_network(path, step)
  try:
    model = restore.read_checkpoint_part(
        checkpoints, step, 'its arrays',
        lambda: checkpoints.restore_untyped(step))
  finally:
    checkpoints.close()
  model = _to_numpy(model)
  config = run_files.read_config(path) or {}
  normalisation = dict(
      mean_rgb=tuple(config.get('mean_rgb', config_schema.CIFAR_MEAN_RGB)),
      std_rgb=tuple(config.get('std_rgb', config_schema.CIFAR_STD_RGB)))
  origin = {'pretrained': filesystem.absolute(path),
            'pretrained_format': WORKDIR, 'pretrained_step': step}
  if 'head' not in network:
    return Weights(network['backbone'], model, origin, **normalisation)
  if network.get('finetune'):
    backbone_variables = {'params': model['params']['backbone'],
                          'batch_stats': model['batch_stats']['backbone']}
    backbone_origin = origin
  else:
    if network.get('pretrained') in (None, 'random'):
      raise InputError(
          f'{path} holds heads on a randomly initialised backbone '
          f"({network.get('pretrained')!r}), whose weights were not saved: "
          'there is no backbone to load with them')
    backbone = read(network['pretrained'],
                    network.get('pretrained_step') or 0)
    if backbone.spec != network['backbone']:
      raise InputError(
          f"{path}: its backbone {network['pretrained']!r} now holds "
          f"{backbone.spec}, not the {network['backbone']} its heads were "
          'trained on')
    backbone_variables = backbone.variables
    backbone_origin = backbone.origin
  heads = Heads(network['head'], tuple(network['blocks']),
                network['num_classes'],
                {'params': model['params']['heads'],
                 'batch_stats': model['batch_stats']['heads']})
  return Weights(network['backbone'], backbone_variables,
                 dict(backbone_origin, heads_from=origin['pretrained'],
                      heads_step=step), heads=heads, **normalisation)
