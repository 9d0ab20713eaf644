"""The backbone ``config.pretrained`` names, restored onto the mesh.

Evaluation restores the backbone of a pretext run from its Orbax
checkpoint (``weights.workdir_format``): parameters and BatchNorm
statistics, into the shardings of the current mesh. Before any array is
read, the checkpoint's network (its saved spec and array shapes) is
compared with the one the config describes, and a mismatch names the
differing arrays and the flags that would match; the restored arrays
must be finite. An exported or official file is read with
``weights.read`` and checked the same way; ``'random'`` is a freshly
initialised backbone.
"""

import dataclasses
from typing import Any

import jax
import numpy as np

from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.weights import batch_stats as batch_stats_lib
from rotnet_jax.weights import types
from rotnet_jax.weights import workdir_format
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import filesystem

# config.pretrained value for a randomly initialised backbone.
RANDOM = weights_lib.RANDOM


@dataclasses.dataclass(frozen=True)
class RestoredBackbone:
  """A backbone to build heads on.

  Attributes:
    spec: what rebuilds the network (``models.build_backbone``).
    variables: ``{'params', 'batch_stats'}``, replicated on the mesh.
    origin: where it came from, for results and resume checks:
      ``{'pretrained': workdir, 'pretrained_step': step}``, a file's
      (``weights.Weights.origin``), or ``{'pretrained': 'random',
      'pretrained_seed': seed, 'random_batch_stats': ...}``.
  """
  spec: dict[str, Any]
  variables: Any
  origin: dict[str, Any]


def _shape_differences(saved: dict[str, tuple], wanted: dict[str, tuple]
                       ) -> list[str]:
  # Parameters first: they say more than the BatchNorm statistics.
  paths = sorted(set(saved) | set(wanted),
                 key=lambda k: (not k.startswith('params'), k))
  return [f"{k}: checkpoint {saved.get(k, 'absent')} vs config "
          f"{wanted.get(k, 'absent')}"
          for k in paths if saved.get(k) != wanted.get(k)]


def load_backbone(config, mesh, train_source=None) -> RestoredBackbone:
  """The backbone named by ``config.pretrained``, shaped by ``config.model``.

  Args:
    config: ``pretrained`` (a run's workdir, an exported ``.safetensors``
      file, an official PyTorch file, or ``'random'``),
      ``pretrained_step``, ``model``, ``image_size``, ``rotations``, and
      for a random backbone ``seed`` and ``random_batch_stats``.
    mesh: the variables are replicated over it.
    train_source: training batches, to re-estimate a random backbone's
      BatchNorm statistics (``random_batch_stats='reestimated'``).

  Raises:
    MissingInputError: no such workdir or file, no checkpoint, no such step.
    InputError: the weights' network is not the one ``config.model``
      describes (naming the arrays whose shapes differ), the file is not
      one the package can read, or an array holds NaN or infinite values
      (naming it).
  """
  if config.pretrained == RANDOM:
    return _random_backbone(config, mesh, train_source)
  if weights_lib.pretrained_kind(config.pretrained) != weights_lib.WORKDIR:
    return _file_backbone(config, mesh)
  replicated = parallel.replicated(mesh)
  checkpoints, step = workdir_format.pretrained_checkpoint(
      config.pretrained, config.pretrained_step)
  try:
    saved_network = workdir_format.read_network(checkpoints, step)
    workdir_format.check_not_transfer(config.pretrained, saved_network)
    if 'head' in saved_network:
      raise InputError(
          f'config.pretrained={config.pretrained!r} holds an evaluation run '
          f"({saved_network['head']} heads on blocks "
          f"{saved_network['blocks']} of a backbone), not a backbone to "
          f"evaluate. Its backbone came from "
          f"{saved_network.get('pretrained')!r}: pass that as "
          '--config.pretrained.')
    saved_spec = saved_network['backbone']
    spec = _config_spec(config, saved_spec)
    target = models.abstract_variables(spec, replicated)
    differ = _shape_differences(
        workdir_format.read_checkpoint_part(
            checkpoints, step, 'its array shapes',
            lambda: checkpoints.model_shapes(step)),
        checkpoint_lib.flat_shapes(target))
    _check_same_network(f'the checkpoint in {checkpoints.directory} '
                        f'(step {step})', saved_spec, spec, differ)
    variables = workdir_format.read_checkpoint_part(
        checkpoints, step, 'its arrays',
        lambda: checkpoints.restore(step, model=target))['model']
  finally:
    checkpoints.close()
  # Replicated, so every process holds the whole of each array: np.asarray
  # reads its own copy (also with several processes).
  types.check_finite(
      f'config.pretrained={config.pretrained!r}: the checkpoint in '
      f'{checkpoints.directory} (step {step})',
      jax.tree.map(np.asarray, variables))
  return RestoredBackbone(spec, variables, {
      'pretrained': filesystem.parent(checkpoints.directory),
      'pretrained_step': step})


def _config_spec(config, saved_spec: dict[str, Any]) -> dict[str, Any]:
  # The classifier's outputs come from the weights (4 rotations, or 2 or
  # 8); the rest must match this config.
  return models.backbone_spec(config.model, image_size=config.image_size,
                              num_classes=saved_spec['num_classes'])


def _check_same_network(where: str, saved_spec, spec, differ) -> None:
  if not differ and saved_spec == spec:
    return
  flags = ' '.join(f'--config.model.{k}={v}' for k, v in saved_spec.items()
                   if k not in ('name', 'num_classes', 'image_size'))
  raise InputError(
      f'{where} is a {saved_spec}, but this config describes {spec}. Leave '
      "the shape keys unset to take the weights' shape, or pass it: "
      f"--config.model.name={saved_spec['name']} {flags} "
      f"--config.image_size={saved_spec['image_size']}. Differing arrays: " +
      ('; '.join(differ[:6]) or 'none') +
      (f' (and {len(differ) - 6} more)' if len(differ) > 6 else ''))


def _file_backbone(config, mesh) -> RestoredBackbone:
  """An exported or official file's backbone, replicated on `mesh`."""
  if config.pretrained_step:
    raise InputError(
        f'config.pretrained_step={config.pretrained_step}: '
        f'config.pretrained={config.pretrained!r} is a file with one set '
        'of weights; leave the step at 0')
  loaded = weights_lib.read(config.pretrained)
  for key in ('mean_rgb', 'std_rgb'):
    # The network only means something on inputs normalised like its own.
    if not np.allclose(getattr(loaded, key), getattr(config, key)):
      raise InputError(
          f'config.pretrained={config.pretrained!r} was trained on inputs '
          f'normalised with {key}={tuple(getattr(loaded, key))}, but '
          f'config.{key}={tuple(getattr(config, key))}: pass '
          f'--config.{key}="{tuple(getattr(loaded, key))}"')
  spec = _config_spec(config, loaded.spec)
  differ = _shape_differences(
      checkpoint_lib.flat_shapes(loaded.variables),
      checkpoint_lib.flat_shapes(models.abstract_variables(spec)))
  _check_same_network(config.pretrained, loaded.spec, spec, differ)
  return RestoredBackbone(spec, parallel.replicate(mesh, loaded.variables),
                          loaded.origin)


def _random_backbone(config, mesh, train_source) -> RestoredBackbone:
  """A freshly initialised backbone; see ``config.random_batch_stats``."""
  spec = models.backbone_spec(config.model, image_size=config.image_size,
                              num_classes=len(config.rotations))
  variables = jax.jit(
      lambda: models.init_variables(
          spec, config.seed, bn_scale_init=config.model.bn_scale_init),
      out_shardings=parallel.replicated(mesh))()
  origin = {'pretrained': RANDOM, 'pretrained_seed': config.seed,
            'random_batch_stats': config.random_batch_stats}
  if config.random_batch_stats == 'reestimated':
    if train_source is None:
      raise ValueError('re-estimating BatchNorm statistics needs the '
                       'training source')
    variables, count = batch_stats_lib.reestimate(
        spec, variables, train_source, config, mesh)
    origin['random_batch_stats_images'] = count
  return RestoredBackbone(spec, variables, origin)
