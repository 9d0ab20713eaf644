"""Test setup: 8 fake CPU devices, fast failure of stuck collectives, fast
compilation (helpers.FAST_COMPILE_XLA_FLAGS).

XLA reads these flags once, when JAX first creates its CPU backend, so they
are set here before any test imports JAX. Tests that need one device build a
mesh of ``jax.devices()[:1]``.
"""

import functools
import os
import shutil
import tempfile

NUM_FAKE_DEVICES = 8
MULTI_DEVICE_XLA_FLAGS = (
    f'--xla_force_host_platform_device_count={NUM_FAKE_DEVICES} '
    # Several CPU devices in one process can deadlock XLA's collectives
    # (docs/architecture.md, "Pitfalls"): fail in seconds instead of hanging
    # CI.
    '--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 '
    '--xla_cpu_collective_call_terminate_timeout_seconds=15')

os.environ['JAX_PLATFORMS'] = 'cpu'

# pylint: disable=g-import-not-at-top,wrong-import-position
from helpers import FAST_COMPILE_XLA_FLAGS

os.environ['XLA_FLAGS'] = ' '.join(
    (os.environ.get('XLA_FLAGS', ''), FAST_COMPILE_XLA_FLAGS,
     MULTI_DEVICE_XLA_FLAGS)).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from rotnet_jax import parallel  # pylint: disable=wrong-import-position


# Compiled programs shared by the whole session and the processes it starts
# (main.py runs, workers, notebook kernels): the tests train the same tiny
# networks over and over, and on CPU XLA compilation is most of a tiny run's
# time. The values are those of jax's own option names; subprocesses read
# the same options from the environment.
_CACHE_OPTIONS = {
    'jax_persistent_cache_min_compile_time_secs': 0,
    # -1: every entry, however small, and no filesystem-based override.
    'jax_persistent_cache_min_entry_size_bytes': -1,
}


def pytest_configure(config):
  """Points JAX's persistent compilation cache at a folder of this session.

  Set before collection (programs compiled while test modules are imported
  are cached too) and in the environment, for the processes tests start.
  With pytest-xdist (``-n``), the workers inherit the folder of the process
  that started them, so they share one cache; that process removes it.
  """
  cache_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if not (os.environ.get('PYTEST_XDIST_WORKER') and cache_dir):
    cache_dir = tempfile.mkdtemp(prefix='rotnet_jax_cache_')
    config.add_cleanup(functools.partial(shutil.rmtree, cache_dir,
                                         ignore_errors=True))
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache_dir
  for name, value in _CACHE_OPTIONS.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)


@pytest.fixture(scope='session')
def tiny_pretext_run(tmp_path_factory):
  """The workdir of a one-epoch tiny RotNet-3 (``tiny_config(batch_size=100)``:
  5 steps, one checkpoint at step 5), trained once per session on one device.

  For tests that only read it (as pretrained weights); a test that writes
  to a run copies it into its own ``tmp_path`` first.
  """
  # pylint: disable=g-import-not-at-top
  from helpers import tiny_config
  from rotnet_jax.training import train
  # pylint: enable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('tiny_pretext'))
  train.train_and_evaluate(tiny_config(batch_size=100), workdir,
                           mesh=parallel.make_mesh(jax.devices()[:1]))
  return workdir


@pytest.fixture
def one_device_mesh():
  return parallel.make_mesh(jax.devices()[:1])


@pytest.fixture
def eight_device_mesh():
  assert jax.device_count() == NUM_FAKE_DEVICES
  return parallel.make_mesh()


@pytest.fixture
def enable_x64():
  """64-bit JAX (``config.float64`` runs) for one test.

  ``jax_enable_x64`` is process-wide, so it is restored afterwards: the
  other tests keep running in 32 bits. Float32 runs on different device
  counts drift apart by up to tens of percent per array in 10 steps
  (summation order, amplified by BatchNorm); float64 runs agree to about
  1e-15, so comparisons across device counts run in float64 and demand
  1e-6.
  """
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  try:
    yield
  finally:
    jax.config.update('jax_enable_x64', previous)


def max_relative_difference(tree_a, tree_b) -> float:
  """The largest ``|a - b| / |b|`` (Euclidean norms) over matching arrays."""
  leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
  assert len(leaves_a) == len(leaves_b)
  worst = 0.0
  for a, b in zip(leaves_a, leaves_b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = np.linalg.norm(b)
    worst = max(worst, np.linalg.norm(a - b) / (scale if scale else 1.0))
  return float(worst)
