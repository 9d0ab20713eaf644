"""Device mesh and shardings for data parallelism.

One 1-D mesh axis, ``data``, spans every device of every process. Batches
are global ``jax.Array``s split along their first axis over ``data``;
parameters and optimiser state are replicated. Under ``jax.jit`` the
gradient mean and the BatchNorm statistics are then reductions over the
global batch, with no explicit collectives in the model code.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rotnet_jax.errors import InputError

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``data`` mesh over `devices` (default: all devices, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays held whole by every device (parameters)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of batches: leading axis split over ``data``."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = 'batch_size'):
  """Raises InputError unless `batch_size` splits over devices and hosts."""
  num_devices = mesh.devices.size
  if batch_size <= 0 or batch_size % num_devices:
    lower = max(num_devices, batch_size // num_devices * num_devices)
    raise InputError(
        f'{name}={batch_size} must be a positive multiple of the number of '
        f'devices in the mesh ({num_devices}); for example {lower} or '
        f'{lower + num_devices}.')
  if batch_size % jax.process_count():
    raise InputError(
        f'{name}={batch_size} must be divisible by the number of processes '
        f'({jax.process_count()}).')


def host_to_global(mesh: Mesh, local_batch):
  """Assembles per-process numpy batches into global arrays sharded on ``data``.

  Args:
    mesh: the data mesh.
    local_batch: pytree of numpy arrays, this process's slice of the global
      batch (the whole batch on a single host).

  Returns:
    The same pytree of global ``jax.Array``s.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)


def replicate(mesh: Mesh, tree):
  """Places a pytree of host arrays whole on every device of `mesh`.

  Every process must pass the same values (they are the same parameters or
  the same dataset on every host).
  """
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def first_process_then_others(fn, name: str):
  """Runs `fn` on process 0, then on the others (a barrier in between).

  For preparing files in a possibly shared folder: process 0 writes them,
  the other processes then find them there (or, on their own disks, write
  their own copy).
  """
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    result = fn()
    multihost_utils.sync_global_devices(name)
    return result
  multihost_utils.sync_global_devices(name)
  return fn()


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to do on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def multihost_environment() -> bool:
  """Whether environment variables say this is one process of several.

  These are the launchers ``jax.distributed.initialize()`` understands
  without arguments; a single process never calls it (that would hang).
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for size_var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(env.get(size_var, '1') or 1) > 1:
      return True
  return ',' in env.get('TPU_WORKER_HOSTNAMES', '')
