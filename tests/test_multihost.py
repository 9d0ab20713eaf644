"""Two processes through jax.distributed, as on a multi-host TPU or GPU pod."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import MULTIHOST_OVERRIDES, REPO_ROOT, tiny_config
from rotnet_jax import models
from rotnet_jax import train

_WORKER = os.path.join(REPO_ROOT, 'tests', 'multihost_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run_two_processes(tmp_path, pipeline):
  port, workdir = _free_port(), str(tmp_path / 'run')
  outputs = [str(tmp_path / f'params{i}.npz') for i in range(2)]
  workers = [subprocess.Popen(
      [sys.executable, _WORKER, str(i), str(port), workdir, pipeline,
       outputs[i]], cwd=REPO_ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [w.communicate(timeout=600)[0] for w in workers]
  for worker, log in zip(workers, logs):
    assert worker.returncode == 0, log[-3000:]
  params = []
  for path in outputs:
    with np.load(path) as data:
      params.append([data[k] for k in sorted(data.files,
                                             key=lambda k: int(k[4:]))])
  return workdir, params


@pytest.mark.parametrize('pipeline', ['device', 'tfdata'])
def test_two_processes_train_one_model(pipeline, tmp_path, one_device_mesh):
  workdir, (params0, params1) = _run_two_processes(tmp_path, pipeline)
  for a, b in zip(params0, params1):
    np.testing.assert_array_equal(a, b)  # Replicas agree exactly.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    events = [json.loads(line) for line in f]
  # Process 0 alone writes: one test event for the one epoch.
  assert [e['split'] for e in events].count('test') == 1
  assert events[-1]['split'] == 'test' and np.isfinite(events[-1]['loss'])
  # The accuracy counts correct answers among the 297 x 4 rotated test
  # images, summed over both processes.
  correct = events[-1]['accuracy'] * 297 * 4
  assert abs(correct - round(correct)) < 1e-6
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['5']
  with open(os.path.join(workdir, 'results.json')) as f:
    (head,) = json.load(f)['heads']
  assert head['test_samples'] == 297 * 4
  assert head['final_test_accuracy'] == events[-1]['accuracy']
  if pipeline == 'device':
    # Every process sees the same global batches as one process would, so
    # two processes train the model one device trains (up to summation
    # order in the all-reduce).
    config = tiny_config(**MULTIHOST_OVERRIDES)
    single = train.train_and_evaluate(config, str(tmp_path / 'single'),
                                      mesh=one_device_mesh)
    spec = models.backbone_spec(config.model, image_size=32, num_classes=4)
    init = models.init_variables(spec, config.seed)
    flat = lambda tree: np.concatenate(  # pylint: disable=unnecessary-lambda-assignment
        [np.ravel(np.asarray(x)) for x in tree])
    start = flat(jax.tree.leaves(init['params']))
    update_one = flat(jax.tree.leaves(single.params)) - start
    update_two = flat(params0) - start
    # The first step agrees to float rounding; summation order differs
    # between the all-reduce and one device, and BatchNorm amplifies that a
    # little each step, so the 5-step updates may differ by a few percent.
    assert (np.linalg.norm(update_two - update_one) <
            0.05 * np.linalg.norm(update_one))
