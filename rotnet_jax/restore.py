"""A pretrained backbone, restored from a run's checkpoint (or random).

Evaluation restores the backbone of a pretext run from its Orbax
checkpoint: parameters and BatchNorm statistics, into the shardings of the
current mesh. Before any array is read, the checkpoint's network (its saved
spec and array shapes) is compared with the one the config describes, and a
mismatch names the differing arrays and the flags that would match.
"""

import dataclasses
import os
from typing import Any

import jax

from rotnet_jax import checkpoint as checkpoint_lib
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.errors import first_line

# config.pretrained value for a randomly initialised backbone.
RANDOM = 'random'


@dataclasses.dataclass(frozen=True)
class RestoredBackbone:
  """A backbone to build heads on.

  Attributes:
    spec: what rebuilds the network (``models.build_backbone``).
    variables: ``{'params', 'batch_stats'}``, replicated on the mesh.
    origin: where it came from, for results and resume checks:
      ``{'pretrained': workdir, 'pretrained_step': step}`` or
      ``{'pretrained': 'random', 'pretrained_seed': seed}``.
  """
  spec: dict[str, Any]
  variables: Any
  origin: dict[str, Any]


def pretrained_checkpoint(workdir: str, step: int = 0
                          ) -> tuple[checkpoint_lib.Checkpointer, int]:
  """The checkpoints of a run's `workdir` and the step to read (0: latest).

  Raises:
    MissingInputError: no such folder, no checkpoint, or no such step.
  """
  path = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(path):
    raise MissingInputError(
        f'config.pretrained={workdir!r}: {path} does not exist. Pass the '
        f'--workdir of a pretext run (or "{RANDOM}").')
  if not os.path.isdir(checkpoint_lib.checkpoint_dir(path)):
    raise MissingInputError(
        f'config.pretrained={workdir!r} has no checkpoints '
        f'({checkpoint_lib.checkpoint_dir(path)} is missing): train the '
        'pretext run there first.')
  checkpoints = checkpoint_lib.Checkpointer(path, read_only=True)
  steps = checkpoints.all_steps()
  if not steps:
    raise MissingInputError(
        f'{checkpoints.directory} holds no finished checkpoint: train the '
        'pretext run there first.')
  step = step or max(steps)
  if step not in steps:
    raise MissingInputError(
        f'config.pretrained_step={step} is not among the checkpoints of '
        f'{checkpoints.directory}: {sorted(steps)}')
  return checkpoints, step


def _read(checkpoints, step: int, what: str, read):
  """``read()``, with a damaged checkpoint's error as one InputError."""
  try:
    return read()
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(
        f'config.pretrained: the checkpoint in {checkpoints.directory} '
        f'(step {step}) is damaged: {what} cannot be read '
        f'({type(e).__name__}: {first_line(e)}). Pass another '
        '--config.pretrained_step, or retrain the pretext run.') from e


def _shape_differences(saved: dict[str, tuple], wanted: dict[str, tuple]
                       ) -> list[str]:
  # Parameters first: they say more than the BatchNorm statistics.
  paths = sorted(set(saved) | set(wanted),
                 key=lambda k: (not k.startswith('params'), k))
  return [f"{k}: checkpoint {saved.get(k, 'absent')} vs config "
          f"{wanted.get(k, 'absent')}"
          for k in paths if saved.get(k) != wanted.get(k)]


def load_backbone(config, mesh) -> RestoredBackbone:
  """The backbone named by ``config.pretrained``, shaped by ``config.model``.

  Args:
    config: ``pretrained`` (a run's workdir, or ``'random'``),
      ``pretrained_step``, ``model``, ``image_size``, ``rotations`` and
      ``seed`` (for a random backbone).
    mesh: the variables are replicated over it.

  Raises:
    MissingInputError: no such workdir, no checkpoint, no such step.
    InputError: the checkpoint's network is not the one ``config.model``
      describes (naming the arrays whose shapes differ).
  """
  replicated = parallel.replicated(mesh)
  if config.pretrained == RANDOM:
    spec = models.backbone_spec(config.model, image_size=config.image_size,
                                num_classes=len(config.rotations))
    variables = jax.jit(lambda: models.init_variables(spec, config.seed),
                        out_shardings=replicated)()
    return RestoredBackbone(spec, variables, {'pretrained': RANDOM,
                                      'pretrained_seed': config.seed})
  checkpoints, step = pretrained_checkpoint(config.pretrained,
                                            config.pretrained_step)
  try:
    saved_network = _read(checkpoints, step, 'its metadata',
                          lambda: checkpoints.read_meta(step)['network'])
    if 'head' in saved_network:
      raise InputError(
          f'config.pretrained={config.pretrained!r} holds an evaluation run '
          f"({saved_network['head']} heads on blocks "
          f"{saved_network['blocks']} of a backbone), not a backbone to "
          f"evaluate. Its backbone came from "
          f"{saved_network.get('pretrained')!r}: pass that as "
          '--config.pretrained.')
    saved_spec = saved_network['backbone']
    # The classifier's outputs come from the checkpoint (4 rotations, or 2
    # or 8); the rest must match this config.
    spec = models.backbone_spec(config.model, image_size=config.image_size,
                                num_classes=saved_spec['num_classes'])
    target = models.abstract_variables(spec, replicated)
    differ = _shape_differences(
        _read(checkpoints, step, 'its array shapes',
              lambda: checkpoints.model_shapes(step)),
        checkpoint_lib.flat_shapes(target))
    if differ or saved_spec != spec:
      flags = ' '.join(f'--config.model.{k}={v}' for k, v in saved_spec.items()
                       if k not in ('name', 'num_classes', 'image_size'))
      raise InputError(
          f'the checkpoint in {checkpoints.directory} (step {step}) is a '
          f'{saved_spec}, but this config describes {spec}. Pass the pretext '
          f"run's shape: --config.model.name={saved_spec['name']} {flags} "
          f"--config.image_size={saved_spec['image_size']}. Differing "
          'arrays: ' + ('; '.join(differ[:6]) or 'none') +
          (f' (and {len(differ) - 6} more)' if len(differ) > 6 else ''))
    variables = _read(checkpoints, step, 'its arrays',
                      lambda: checkpoints.restore(step, model=target))['model']
  finally:
    checkpoints.close()
  return RestoredBackbone(spec, variables, {
      'pretrained': os.path.dirname(checkpoints.directory),
      'pretrained_step': step})
