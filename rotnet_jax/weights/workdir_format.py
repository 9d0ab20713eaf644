"""Weights in a run's workdir: its Orbax checkpoints and ``config.json``.

A pretext or supervised run's workdir holds a backbone. An evaluation
run's holds heads: with the backbone too when it was fine-tuned, else only
the name of the frozen backbone they were trained on
(``network['pretrained']``), which may be in another format. :func:`read`
returns what the workdir holds and never reads that other path; the
dispatcher (``weights.read``) composes the heads with their backbone.
"""

import dataclasses
from typing import Any

import numpy as np

from rotnet_jax import config_schema
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.errors import first_line
from rotnet_jax.weights import types
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files


@dataclasses.dataclass(frozen=True)
class HeadsOnly:
  """An evaluation workdir's heads, without their frozen backbone.

  Attributes:
    heads: the heads.
    spec: the spec of the backbone they were trained on.
    pretrained: where that backbone was read from (the run's
      ``config.pretrained``; ``'random'`` or None when it was not saved).
    pretrained_step: its checkpoint step (0 or None: the latest, or a
      file).
    origin: the workdir's own (see ``Weights.origin``).
    mean_rgb: the inputs' normalisation, from the run's config.
    std_rgb: the matching standard deviations.
  """
  heads: types.Heads
  spec: dict[str, Any]
  pretrained: str | None
  pretrained_step: int | None
  origin: dict[str, Any]
  mean_rgb: tuple[float, float, float]
  std_rgb: tuple[float, float, float]

  def on(self, variables: dict[str, Any],
         origin: dict[str, Any]) -> types.Weights:
    """The heads on the backbone `variables`, which came from `origin`."""
    return types.Weights(
        self.spec, variables,
        dict(origin, heads_from=self.origin['pretrained'],
             heads_step=self.origin['pretrained_step']),
        mean_rgb=self.mean_rgb, std_rgb=self.std_rgb, heads=self.heads)


def pretrained_checkpoint(workdir: str, step: int = 0
                          ) -> tuple[checkpoint_lib.Checkpointer, int]:
  """The checkpoints of a run's `workdir` and the step to read (0: latest).

  The caller closes the checkpoints.

  Raises:
    MissingInputError: no such folder, no checkpoint, or no such step.
  """
  path = filesystem.absolute(workdir)
  if not filesystem.resolve(path).is_dir():
    raise MissingInputError(
        f'config.pretrained={workdir!r}: {path} does not exist. Pass the '
        f'--workdir of a pretext run (or "{types.RANDOM}").')
  if not filesystem.resolve(checkpoint_lib.checkpoint_dir(path)).is_dir():
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


def read_checkpoint_part(checkpoints, step: int, what: str, read):
  """``read()``, with a damaged checkpoint's error as one InputError.

  Args:
    checkpoints: the Checkpointer read from.
    step: its step being read.
    what: the part read, for the message (e.g. ``'its metadata'``).
    read: ``() -> value``.
  """
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


def read_network(checkpoints, step: int) -> dict[str, Any]:
  """The ``network`` the checkpoint `step` saved (its meta, no arrays)."""
  return read_checkpoint_part(checkpoints, step, 'its metadata',
                              lambda: checkpoints.read_meta(step)['network'])


def read_spec(path: str, step: int = 0) -> dict[str, Any]:
  """The backbone spec the checkpoint of `path` saved; no array is read.

  For an evaluation workdir, that of the backbone its heads were trained
  on.

  Raises:
    MissingInputError, InputError: see :func:`pretrained_checkpoint` and
      :func:`read_checkpoint_part`.
  """
  checkpoints, step = pretrained_checkpoint(path, step)
  try:
    return read_network(checkpoints, step)['backbone']
  finally:
    checkpoints.close()


def check_not_transfer(path: str, network: dict[str, Any]) -> None:
  """Raises InputError if `network` is a PASCAL VOC transfer run's.

  Its AlexNet was re-headed and fine-tuned on VOC (a classifier of 20
  sigmoids, or a segmentation network): it is a result, not a backbone
  for the package's evaluations, exports or feature extraction.
  """
  if 'transfer_task' in network:
    raise InputError(
        f'{path} holds a PASCAL VOC transfer run '
        f'({network["transfer_task"]} of the backbone at '
        f'{network.get("pretrained")!r}), not a backbone to read: pass the '
        'pretext run it started from (the path just named) instead')


def read(path: str, step: int = 0) -> types.Weights | HeadsOnly:
  """What the workdir `path` holds at `step` (0: its latest checkpoint).

  Returns:
    The weights, or for an evaluation of a frozen backbone its
    :class:`HeadsOnly`.

  Raises:
    MissingInputError, InputError: see :func:`pretrained_checkpoint` and
      :func:`read_checkpoint_part`; or an array holds NaN or infinite
      values (``types.check_finite``).
  """
  checkpoints, step = pretrained_checkpoint(path, step)
  try:
    network = read_network(checkpoints, step)
    model = read_checkpoint_part(
        checkpoints, step, 'its arrays',
        lambda: checkpoints.restore_untyped(step))
  finally:
    checkpoints.close()
  check_not_transfer(path, network)
  model = _to_numpy(model)
  types.check_finite(
      f'the checkpoint in {checkpoints.directory} (step {step})', model)
  config = run_files.read_config(path) or {}
  mean_rgb = tuple(config.get('mean_rgb', config_schema.CIFAR_MEAN_RGB))
  std_rgb = tuple(config.get('std_rgb', config_schema.CIFAR_STD_RGB))
  origin = {'pretrained': filesystem.absolute(path),
            'pretrained_format': types.WORKDIR, 'pretrained_step': step}
  if 'head' not in network:
    return types.Weights(network['backbone'], model, origin,
                         mean_rgb=mean_rgb, std_rgb=std_rgb)
  heads = HeadsOnly(
      types.Heads(network['head'], tuple(network['blocks']),
                  network['num_classes'],
                  {'params': model['params']['heads'],
                   'batch_stats': model['batch_stats']['heads']}),
      network['backbone'], network.get('pretrained'),
      network.get('pretrained_step'), origin, mean_rgb, std_rgb)
  if not network.get('finetune'):
    return heads
  return heads.on({'params': model['params']['backbone'],
                   'batch_stats': model['batch_stats']['backbone']}, origin)


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)
