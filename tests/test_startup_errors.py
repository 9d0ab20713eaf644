"""Start-up errors of a multi-process or float64 run: clear and quick.

(A global batch that the device count does not divide is in
test_bad_input.py: the message names both numbers.)
"""

import os
import socket
import subprocess
import sys
import time

import jax
import pytest

from helpers import REPO_ROOT, one_device_env, tiny_config
from rotnet_jax import models
from rotnet_jax.errors import ConfigError
from rotnet_jax.training import train


def _unused_port():
  # Bound, then closed: nothing listens there afterwards.
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_a_coordinator_that_never_answers_stops_the_process(tmp_path):
  port = _unused_port()
  script = ('from rotnet_jax import parallel\n'
            f"parallel.initialize_distributed('localhost:{port}', 2, 1, "
            'timeout_s=3)\n'
            "print('joined')\n")
  env = one_device_env(JAX_PLATFORMS='cpu')
  start = time.monotonic()
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=60, check=False)
  elapsed = time.monotonic() - start
  # Exit status 2 and one line, like every bad-input error; not XLA's abort
  # with a stack trace, and not a hang.
  assert result.returncode == 2, result.stderr[-3000:]
  assert elapsed < 30
  assert 'joined' not in result.stdout
  (line,) = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert f'coordinator at localhost:{port}' in line
  assert 'process 1 of 2 waited 3 s' in line
  assert 'Nothing answers there: check that process 0 is running' in line
  assert 'Terminating process' not in result.stderr


def test_float64_needs_64_bit_jax(tmp_path, one_device_mesh):
  assert not jax.config.jax_enable_x64
  with pytest.raises(ConfigError, match=r'config\.float64=True needs '
                     r'64-bit JAX.*JAX_ENABLE_X64=1'):
    train.train_and_evaluate(tiny_config(float64=True), str(tmp_path),
                             mesh=one_device_mesh)
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_float64_and_half_precision_are_refused_together(enable_x64):
  del enable_x64
  with pytest.raises(ConfigError, match=r'float64=True and '
                     r'config\.half_precision=True'):
    models.compute_dtype(half_precision=True, float64=True)
  assert models.compute_dtype(False, True) == jax.numpy.float64

