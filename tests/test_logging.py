"""What a run logs: the learning rate, a parameter overview, the config as
TensorBoard hyperparameters, a progress bar for people, W&B on request;
and the console scripts that start the commands."""

import configparser
import importlib
import os
import shutil
import struct
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import helpers
from helpers import REPO_ROOT
from helpers import tiny_config
from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.training import loop
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import train
from rotnet_jax.training import validation

# Two epochs of 5 steps at two rates, a log line after each epoch's last
# step (where the rate of the step taken and of the next one differ).
_RUN = dict(num_epochs=2, learning_rate_table=((1, 0.1), (2, 0.02)),
            log_every_steps=5)


def _train(workdir, **overrides):
  return train.train_and_evaluate(
      tiny_config(**dict(_RUN, **overrides)), str(workdir),
      mesh=parallel.make_mesh(jax.devices()[:1]))


@pytest.fixture(scope='module')
def logged_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('logged')
  _train(workdir)
  return workdir


def test_train_events_carry_the_learning_rate_of_their_step(logged_run):
  events = [e for e in metrics_lib.read_jsonl(str(logged_run))
            if e['split'] == 'train']
  steps_per_epoch = 500 // 96
  assert [e['step'] for e in events] == [5, 10]
  for event in events:
    # The event of step s (s steps taken) reports the rate of step s - 1.
    expected = 0.1 if event['step'] - 1 < steps_per_epoch else 0.02
    assert event['learning_rate'] == pytest.approx(expected), event
  assert sorted({round(e['learning_rate'], 6) for e in events}) == [0.02, 0.1]


def _tensorboard_events(workdir):
  """Every Event of the run's TensorBoard files (the TFRecord framing read
  by hand: no TensorFlow needed)."""
  event_pb2 = pytest.importorskip('tensorboardX.proto.event_pb2')
  folder = os.path.join(workdir, 'tensorboard')
  events = []
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(record)
      events.append(event)
  return events


def test_tensorboard_has_the_config_and_the_learning_rate(logged_run):
  events = _tensorboard_events(str(logged_run))
  tags = {v.tag for e in events for v in e.summary.value}
  assert 'train/rotation/learning_rate' in tags
  assert 'test/rotation/accuracy' in tags
  plugins = [v for e in events for v in e.summary.value
             if v.metadata.plugin_data.plugin_name == 'hparams']
  assert plugins, tags
  content = b''.join(v.metadata.plugin_data.content for v in plugins)
  # The session-start summary lists each hyperparameter by its dotted key.
  for key in (b'model.width', b'batch_size', b'learning_rate_table'):
    assert key in content


def test_hyperparameters_are_flat_tensorboard_values():
  flat = metrics_lib.hyperparameters(
      {'batch_size': 96, 'model': {'width': 0.5, 'name': 'nin'},
       'rotations': [0, 90], 'data_dir': None, 'nesterov': True})
  assert flat == {'batch_size': 96, 'model.width': 0.5, 'model.name': 'nin',
                  'rotations': '[0, 90]', 'data_dir': 'null',
                  'nesterov': True}


def test_parameter_overview_lists_every_array_and_the_total():
  params = {'conv': {'kernel': np.zeros((3, 3, 3, 8))},
            'bias': np.zeros((8,))}
  lines = metrics_lib.parameter_overview(params).splitlines()
  assert len(lines) == 3
  assert lines[0].split() == ['bias', '8', '8']
  assert lines[1].split() == ['conv/kernel', '3x3x3x8', '216']
  assert lines[2].split() == ['total', '2', 'arrays', '224']


@pytest.mark.slow  # A run; the overview itself: the unit test above.
def test_a_run_logs_its_parameter_overview(tmp_path, caplog):
  caplog.set_level('INFO')
  _train(tmp_path, num_epochs=1, learning_rate_table=((1, 0.1),))
  text = caplog.text
  assert 'Trained parameters:' in text
  # The tiny NIN-3: 9 conv-BN layers (kernel, scale, bias) + classifier.
  assert 'classifier/kernel' in text and ' 29 arrays ' in text


# Two runs: the slow tier (the default run's runs log their lines, the
# tests above).
@pytest.mark.slow
def test_a_progress_bar_for_people_and_log_lines_for_logs(tmp_path, capsys,
                                                         monkeypatch):
  assert not loop.interactive()  # pytest captures the output.
  monkeypatch.setattr(loop, 'interactive', lambda: True)
  _train(tmp_path)
  err = capsys.readouterr().err
  steps = 2 * (500 // 96)
  # tqdm's last refresh: every step done, with the train summary.
  assert f'{steps}/{steps}' in err and 'lr 0.02' in err


class _FakeWandb(types.ModuleType):
  """Records what a run sends to Weights & Biases."""

  def __init__(self):
    super().__init__('wandb')
    self.inits, self.logs, self.finished = [], [], 0

  def init(self, **kwargs):
    self.inits.append(kwargs)
    return self

  def log(self, values, step):
    self.logs.append((step, values))

  def finish(self):
    self.finished += 1


# Three runs: the slow tier (the default run refuses a missing wandb, below,
# and compares metrics.jsonl with TensorBoard's events).
@pytest.mark.slow
def test_weights_and_biases_only_when_asked(tmp_path, monkeypatch):
  fake = _FakeWandb()
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  monkeypatch.setattr(validation.importlib.util, 'find_spec',
                      lambda name: object())
  _train(tmp_path / 'a', wandb_project='rotnet-test')
  assert len(fake.inits) == 1 and fake.finished == 1
  init = fake.inits[0]
  assert init['project'] == 'rotnet-test' and init['resume'] == 'allow'
  assert init['config']['batch_size'] == 96
  logged = {key for _, values in fake.logs for key in values}
  assert {'train/rotation/loss', 'train/rotation/learning_rate',
          'test/rotation/accuracy'} <= logged
  # What W&B got is what metrics.jsonl has.
  tests = [e for e in metrics_lib.read_jsonl(str(tmp_path / 'a'))
           if e['split'] == 'test']
  assert [v['test/rotation/accuracy'] for _, v in fake.logs
          if 'test/rotation/accuracy' in v] == [e['accuracy'] for e in tests]
  # The same workdir keeps its W&B run id; another gets its own.
  _train(tmp_path / 'b', wandb_project='rotnet-test')
  assert fake.inits[1]['id'] != init['id']
  # Off by default: nothing is sent.
  _train(tmp_path / 'c')
  assert len(fake.inits) == 2


def test_weights_and_biases_missing_is_one_error(tmp_path, monkeypatch):
  monkeypatch.setattr(validation.importlib.util, 'find_spec',
                      lambda name: None if name == 'wandb' else object())
  with pytest.raises(InputError, match=r'wandb_project.*pip install wandb'):
    _train(tmp_path / 'run', wandb_project='rotnet-test')
  assert not os.path.exists(tmp_path / 'run')


# Console scripts.


def _console_scripts():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  lines = parser['options.entry_points']['console_scripts'].strip()
  return dict(tuple(part.strip() for part in line.split('='))
              for line in lines.splitlines())


def test_every_console_script_names_a_run_function():
  scripts = _console_scripts()
  assert {'rotnet-train', 'rotnet-reproduce', 'rotnet-report',
          'rotnet-plot', 'rotnet-import-torch', 'rotnet-export',
          'rotnet-extract'} <= set(scripts)
  for target in scripts.values():
    module, function = target.split(':')
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.slow  # Processes; the entry points resolve: the test above.
def test_console_scripts_are_the_commands(tmp_path):
  if shutil.which('rotnet-report') is None:
    pytest.skip('the package is not installed with its console scripts')
  env = helpers.one_device_env()
  report = subprocess.run(['rotnet-report', str(tmp_path / 'none')],
                          capture_output=True, text=True, env=env,
                          timeout=120)
  assert report.returncode == 2
  assert report.stderr.strip().startswith('error:')
  assert 'none is not a folder' in report.stderr
  trained = subprocess.run(
      ['rotnet-train', '--config=configs/quick.py',
       f'--workdir={tmp_path / "run"}', '--config.num_epochs=0'],
      capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
  assert trained.returncode == 2
  assert 'config.num_epochs=0' in trained.stderr
