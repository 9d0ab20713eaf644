"""Device mesh and shardings for data parallelism.

One 1-D mesh axis, ``data``, spans every device of every process. Batches
are global ``jax.Array``s split along their first axis over ``data``;
parameters and optimiser state are replicated. Under ``jax.jit`` the
gradient mean and the BatchNorm statistics are then reductions over the
global batch, with no explicit collectives in the model code.
"""

import os
import socket
import sys
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rotnet_jax.errors import InputError

DATA_AXIS = 'data'

# Seconds jax.distributed.initialize waits for every process to join
# (JAX's own default).
DEFAULT_INIT_TIMEOUT_S = 300
# XLA aborts the process when its own initialisation timeout passes; ours
# fires this much earlier, so the user reads why instead of a stack trace.
_ABORT_GRACE_S = 5


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


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           timeout_s: int = DEFAULT_INIT_TIMEOUT_S) -> None:
  """``jax.distributed.initialize`` that fails clearly instead of hanging.

  Arguments left None come from the environment, as for
  ``jax.distributed.initialize()`` (``JAX_COORDINATOR_ADDRESS``, SLURM,
  Open MPI, TPU pods).

  If the processes have not all joined after `timeout_s` seconds (the
  coordinator never answers, or some process never started), the process
  prints one line naming the coordinator address, the timeout and what to
  check, and exits with status 2. XLA itself would abort with a stack
  trace after its initialisation timeout; the failure happens inside C++
  and cannot be caught in Python, hence a watchdog thread that exits first.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator.
    num_processes: how many processes take part.
    process_id: this process's index.
    timeout_s: how long to wait for every process to join.
  """
  done = threading.Event()

  def watchdog():
    if not done.wait(timeout_s):
      print('error: ' + _init_timeout_message(coordinator_address,
                                              num_processes, process_id,
                                              timeout_s),
            file=sys.stderr, flush=True)
      os._exit(2)  # pylint: disable=protected-access

  thread = threading.Thread(target=watchdog, name='distributed-init-watchdog',
                            daemon=True)
  thread.start()
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=timeout_s + _ABORT_GRACE_S)
  finally:
    done.set()


def _init_timeout_message(coordinator_address, num_processes, process_id,
                          timeout_s) -> str:
  """Why the processes did not all join, as far as this process can tell."""
  # jax.distributed records what it resolved (from the arguments or the
  # environment) before it connects.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  state = distributed.global_state
  address = (state.coordinator_address or coordinator_address or
             os.environ.get('JAX_COORDINATOR_ADDRESS') or '(none found)')
  process = state.process_id if process_id is None else process_id
  count = state.num_processes if num_processes is None else num_processes
  where = (f'process {process} of {count}' if count is not None
           else 'this process')
  prefix = (f'jax.distributed.initialize: {where} waited {timeout_s} s '
            f'for all processes to join through the coordinator at '
            f'{address}, without success. ')
  if _answers(address):
    return prefix + (
        f'The coordinator answers, so check that all {count} processes '
        'were started, with the same coordinator address and number of '
        'processes and each with its own process id, and that none of them '
        'failed at start-up (see their logs).')
  return prefix + (
      'Nothing answers there: check that process 0 is running (it hosts '
      'the coordinator), that the host name and port are right and the '
      'port is reachable from this host (firewall, proxy variables), then '
      'start every process again.')


def _answers(address: str) -> bool:
  """Whether something accepts TCP connections at ``host:port``."""
  host, _, port = address.rpartition(':')
  host = host.strip('[]')
  try:
    with socket.create_connection((host or 'localhost', int(port)),
                                  timeout=2):
      return True
  except (OSError, ValueError):
    return False
