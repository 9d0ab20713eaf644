"""End to end through the command line, as a user runs it."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, one_device_env, tiny_config
from rotnet_jax.training import benchmark

# A quick.py run shrunk to seconds: 256 digits, 1/32 width, 1 epoch.
_SMALL = ['--config.num_epochs=1', '--config.num_train_examples=256',
          '--config.model.width=0.03125', '--config.log_every_steps=2',
          '--config.learning_rate_table=((1, 0.1),)']


def _main(workdir, *args):
  # A plain single-device machine: drop the tests' fake-device XLA flags.
  env = one_device_env()
  return subprocess.run(
      [sys.executable, 'main.py', '--config=configs/quick.py',
       f'--workdir={workdir}', *_SMALL, *args], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=600, env=env)


def test_main_trains_writes_outputs_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  result = _main(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stderr
  assert 'process 0 of 1, 1 local / 1 global devices' in log
  assert 'epoch 1/1 step 2/4 | train loss' in log and 'ETA' in log
  assert 'epoch 1/1 | test loss' in log and '(1188 test samples)' in log
  assert 'orbax' not in log.lower()  # Library chatter is filtered.

  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['dataset'] == 'digits'
  assert config['network'] == {'backbone': {
      'name': 'nin', 'num_classes': 4, 'num_blocks': 4, 'width': 0.03125,
      'image_size': 32}}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    events = [json.loads(line) for line in f]
  assert [e['split'] for e in events] == ['train', 'train', 'test']
  assert [e['step'] for e in events] == [2, 4, 4]
  for event in events:
    assert math.isfinite(event['loss']) and event['loss'] > 0
    assert 0 <= event['accuracy'] <= 1 and event['images_per_sec'] > 0
  # The test accuracy counts correct answers among the 297 x 4 rotated
  # test images, and results.json reports that same number.
  correct = events[-1]['accuracy'] * 1188
  assert abs(correct - round(correct)) < 1e-6
  with open(os.path.join(workdir, 'results.json')) as f:
    (head,) = json.load(f)['heads']
  assert head['final_test_accuracy'] == events[-1]['accuracy']
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['4']
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.*'))

  again = _main(workdir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from' in again.stderr and 'Nothing to train' in again.stderr


# Both sources, timed: the slow tier (the default run checks the benchmark's
# flags in test_hostile_input.py and its 1x1 forms in test_conv1x1.py).
@pytest.mark.slow
def test_benchmark_reports_both_sources(tmp_path, one_device_mesh):
  config = tiny_config(batch_size=32)
  report = benchmark.run_benchmark(config, steps=2, warmup=1, examples=64,
                                   mesh=one_device_mesh)
  assert report['rotated_batch_size'] == 128
  assert report['precision'] == 'float32' and report['device_kind'] == 'cpu'
  assert [r['source'] for r in report['results']] == ['device', 'tfdata']
  for result in report['results']:
    assert result['images_per_sec'] > 0 and result['compile_s'] > 0


def test_bad_input_prints_one_line_and_exits_2(tmp_path):
  result = _main(str(tmp_path / 'run'), '--config.dataset=/no/such/folder')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: image folder split 'train' not found: /no/such/folder/train")
  assert 'Traceback' not in result.stderr


# Two sources in bfloat16 in a fresh process: the slow tier (the default
# run has the benchmark in-process above and the command's bad input in
# test_hostile_input.py).
@pytest.mark.slow
def test_benchmark_command_writes_json(tmp_path):
  output = tmp_path / 'bench.json'
  env = one_device_env()
  result = subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.benchmark',
       '--config=configs/quick.py', '--config.half_precision=True',
       '--config.model.width=0.03125', '--config.batch_size=16', '--steps=2',
       '--warmup=1', '--examples=32', f'--output={output}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'rotated img/s' in result.stdout
  report = json.loads(output.read_text())
  assert report['precision'] == 'bfloat16'
  assert len(report['results']) == 2
