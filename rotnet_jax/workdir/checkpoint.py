"""Orbax checkpoints. The only module that imports orbax.

Layout of ``WORKDIR/checkpoints/<step>/`` (one folder per saved step, Orbax
``CheckpointManager`` items):

* ``model``: ``{'params': ..., 'batch_stats': ...}``, the network's
  variables as plain nested dicts, all an evaluation run needs;
* ``opt_state``: the optax state (momentum, step count);
* ``meta``: JSON ``{'epoch': epochs completed, 'epoch_step': steps done
  of the next epoch (0 at an epoch's end; a mid-epoch or preemption
  checkpoint has more), 'step': optimiser steps, 'network': what was
  trained (the backbone's spec...), 'config': the resolved config, 'best':
  best-so-far test accuracies, 'train_sums': per-step metric sums not yet
  logged}``. Checkpoints written before mid-epoch saves existed lack
  ``epoch_step`` and ``train_sums``: read them as 0 and ``[]``.

``WORKDIR/config.json`` holds the whole resolved config beside them.
Saves are asynchronous; Orbax writes each step to a temporary folder
(``<step>.orbax-checkpoint-tmp``, some versions add a timestamp) and
renames it when complete, so an interrupted save never hides the previous
checkpoint; such a folder left by a crash is found by
:func:`partial_saves`.

Paths go through ``etils.epath``, so a ``gs://`` workdir works like a
local one.
"""

import os
import re
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from rotnet_jax.workdir import run_files

# Orbax's temporary folder of a save in progress: ``<step>`` and this
# suffix (then a timestamp, in some Orbax versions).
_PARTIAL_SAVE = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')

# Crash-test hook (tests/test_preemption.py): while saving this step, the
# process kills itself with SIGKILL from Orbax's background writer, after
# the temporary folder exists and before it is renamed. Never set it
# outside tests.
KILL_DURING_SAVE_ENV = 'ROTNET_JAX_TEST_KILL_DURING_SAVE'


def checkpoint_dir(workdir: str) -> str:
  """``WORKDIR/checkpoints``, absolute."""
  return run_files.path(workdir, run_files.CHECKPOINTS_DIR)


def abstract_like(tree):
  """Shape, dtype and sharding of every array of `tree`, for restoring.

  Restoring into the shardings of the current mesh is what lets a run
  saved on 8 devices resume on 1 (and the other way round).
  """
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree)


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """``{'params/blocks/0/...': shape}`` of every array (or array spec)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(x.shape)
          for path, x in flat}


def set_aside(workdir: str, step: int) -> str:
  """Moves the folder of checkpoint `step` to ``WORKDIR/damaged_checkpoints``.

  For a checkpoint that cannot be read: it no longer hides the older ones,
  and nothing is deleted. Call it with no Checkpointer of `workdir` open
  (a manager caches its list of steps).

  Returns:
    Where the folder went.
  """
  return _move_to_damaged(workdir, str(step))


def partial_saves(workdir: str) -> list[tuple[int, str]]:
  """The saves that never completed: ``(step, folder name)``, newest first.

  Orbax's temporary folders (``<step>.orbax-checkpoint-tmp...``) that a
  crash or a kill left behind. Orbax never lists them as checkpoints;
  they only take space, and hide nothing. Reads only.
  """
  directory = epath.Path(checkpoint_dir(workdir))
  if not directory.is_dir():
    return []
  found = []
  for entry in directory.iterdir():
    match = _PARTIAL_SAVE.match(entry.name)
    if match:
      found.append((int(match.group(1)), entry.name))
  return sorted(found, reverse=True)


def set_aside_partial(workdir: str, name: str) -> str:
  """Moves the temporary folder `name` of an unfinished save (see
  :func:`partial_saves`) to ``WORKDIR/damaged_checkpoints``.

  Returns:
    Where the folder went.
  """
  return _move_to_damaged(workdir, name)


def _move_to_damaged(workdir: str, name: str) -> str:
  source = epath.Path(checkpoint_dir(workdir)) / name
  target_dir = epath.Path(
      run_files.path(workdir, run_files.DAMAGED_CHECKPOINTS_DIR))
  target_dir.mkdir(parents=True, exist_ok=True)
  target = target_dir / name
  suffix = 0
  while target.exists():
    suffix += 1
    target = target_dir / f'{name}.{suffix}'
  source.rename(target)
  return str(target)


class _KillingJsonHandler(ocp.JsonCheckpointHandler):
  """The ``meta`` handler of a crash test (:data:`KILL_DURING_SAVE_ENV`).

  Only installed when the variable is set, so normal runs never depend on
  the Orbax internal (``_save_fn``, the background write) it overrides.
  """

  async def _save_fn(self, x, directory):
    if str(x.get('step')) == os.environ.get(KILL_DURING_SAVE_ENV):
      os.kill(os.getpid(), signal.SIGKILL)
    await super()._save_fn(x, directory)


# Orbax finds an item's handler by the exact class of its arguments, and
# wraps a handler registered for no save and restore arguments as an
# old-style one. (The manager that kills never restores.)
@ocp.args.register_with_handler(_KillingJsonHandler, for_save=True,
                                for_restore=True)
class _KillingJsonSave(ocp.args.JsonSave):
  pass


class Checkpointer:
  """Saves and restores training state under ``WORKDIR/checkpoints``."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    killing = bool(os.environ.get(KILL_DURING_SAVE_ENV)) and not read_only
    self._json_save = _KillingJsonSave if killing else ocp.args.JsonSave
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'model': ocp.StandardCheckpointHandler(),
                       'opt_state': ocp.StandardCheckpointHandler(),
                       'meta': (_KillingJsonHandler() if killing
                                else ocp.JsonCheckpointHandler())},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only))

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step (finished saves only)."""
    return list(self._manager.all_steps())

  def save(self, step: int, *, model: Any, opt_state: Any,
           meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of one checkpoint at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=self._json_save(meta)))

  def restore(self, step: int, *, model: Any, opt_state: Any | None = None
              ) -> dict[str, Any]:
    """Restores `step` into the shapes and shardings of the given examples.

    Args:
      step: the checkpoint step.
      model: a pytree like the saved ``model`` item (arrays or
        ``jax.ShapeDtypeStruct``s); the restored arrays take its shardings.
      opt_state: likewise for the optimiser state; None skips it (an
        evaluation run needs only the model).

    Returns:
      ``{'model': ..., 'meta': ...}`` and ``'opt_state'`` if asked for.
    """
    items = {'model': ocp.args.StandardRestore(abstract_like(model)),
             'meta': ocp.args.JsonRestore()}
    if opt_state is not None:
      items['opt_state'] = ocp.args.StandardRestore(abstract_like(opt_state))
    return dict(self._manager.restore(step, args=ocp.args.Composite(**items)))

  def restore_untyped(self, step: int) -> Any:
    """The ``model`` item of `step` as numpy arrays, in its saved tree.

    Needs no example tree: for reading weights on the host (export,
    ``rotnet_jax.load``), not for resuming a run.
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore()))
    return restored['model']

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON ``meta`` item of `step` alone (no arrays are read)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(restored['meta'])

  def model_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the saved ``model`` arrays by ``/``-joined path (no data read)."""
    tree = self._manager.item_metadata(step)['model']
    return flat_shapes(tree.tree if hasattr(tree, 'tree') else tree)

  def wait(self) -> None:
    """Returns once every save started is complete, on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
