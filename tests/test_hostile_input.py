"""Hostile input through the real command lines: one line, exit 2, nothing lost.

The README promises that bad input stops a command before any training
step with exactly one ``error:`` line naming the problem, exit status 2,
no traceback, and that a workdir that already holds a run is left byte for
byte as it was. Every case here runs the real command in a subprocess
against such a workdir.

The config cases are generated from the schema (``config_schema.RULES``):
every key gets a value of the wrong type and every refused value its rule
lists, so a new key is covered as soon as it has a rule (and
``test_every_key_has_a_rule`` fails until it has one).

Each case starts a process (several seconds): the default run takes one
case per command and the cheapest of the workdir cases; the whole matrix
is the slow tier (``python -m pytest -q -m slow``).
"""

import concurrent.futures
import json
import math
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT, one_device_env, snapshot, write_image_folder
from rotnet_jax import config_schema
from rotnet_jax.training import preemption

# A quick.py run shrunk to seconds: 256 digits, 1/32 width, 1 epoch.
_SMALL = {'num_epochs': 1, 'num_train_examples': 256, 'model.width': 0.03125,
          'log_every_steps': 2, 'learning_rate_table': ((1, 0.1),)}
_WRONG_TYPE = {int: 'abc', float: 'abc', bool: 'maybe', tuple: 'abc'}
_PARALLEL = 2


def _command(module_or_script, *args):
  if module_or_script.endswith('.py'):
    return [sys.executable, module_or_script, *args]
  return [sys.executable, '-m', module_or_script, *args]


def _run(argv, timeout=300):
  # A plain single-device machine: drop the tests' fake-device XLA flags.
  env = one_device_env()
  return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


def _main_args(workdir, **overrides):
  settings = dict(_SMALL)
  settings.update(overrides)
  return ['--config=configs/quick.py', f'--workdir={workdir}'] + [
      f'--config.{key}={_cli_value(value)}' for key, value in settings.items()]


def _cli_value(value) -> str:
  return repr(value) if isinstance(value, tuple) else str(value)




def _assert_one_error_line(result, *names):
  """Exit 2, no traceback, exactly one ``error:`` line that names `names`."""
  output = result.stdout + result.stderr
  assert result.returncode == 2, output[-3000:]
  assert 'Traceback' not in output, output[-3000:]
  errors = [line for line in output.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, output[-3000:]
  for name in names:
    assert name in errors[0], (name, errors[0])
  return errors[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished quick run's workdir and the snapshot of its bytes."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  result = _run(_command('main.py', *_main_args(workdir)))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, snapshot(workdir)


# ---------------------------------------------------------------------------
# Every config key: a wrong type and every refused value of its rule.


def test_every_key_has_a_rule():
  keys = set(config_schema.flatten(config_schema.defaults()))
  assert set(config_schema.RULES) == keys
  free = {k for k, rule in config_schema.RULES.items() if not rule.invalid}
  # Only bools and free text accept every value of their type.
  assert free == {'experiment', 'nesterov', 'finetune', 'half_precision',
                  'float64', 'allow_config_change'}


def _config_cases():
  defaults = config_schema.defaults()
  cases = []
  for key in sorted(config_schema.RULES):
    *parents, leaf = key.split('.')
    node = defaults
    for parent in parents:
      node = node[parent]
    kind = node.get_type(leaf)
    if kind in _WRONG_TYPE:  # Any text is a string: no wrong type for str.
      cases.append((key, 'wrong type', _WRONG_TYPE[kind]))
    for value in config_schema.RULES[key].invalid:
      cases.append((key, 'refused', _cli_value(value)))
  return cases


_CONFIG_CASES = _config_cases()


def _one_fast_case(values, name, fast_name):
  """`values` as a case named `name`: in the fast tier if it is
  `fast_name`, in the slow tier otherwise (each case is a process start of
  several seconds; one per command is run by default)."""
  marks = () if name == fast_name else (pytest.mark.slow,)
  return pytest.param(*values, id=name, marks=marks)


def _one_fast(cases, ids, fast_name):
  return [_one_fast_case(case, name, fast_name)
          for case, name in zip(cases, ids)]
# Every case is in the slow tier (its fixture trains a run: about 25 s);
# test_main.py's bad-input test refuses a config value in the fast one.
_FAST_CONFIG_CASE = ()
_CONFIG_TEST = 'test_a_bad_config_value_is_one_line_and_changes_nothing'


def _config_case_param(case):
  key, kind, value = case
  return _one_fast_case((case,), f'{key}-{kind}-{value}',
                        '-'.join(_FAST_CONFIG_CASE))


@pytest.fixture(scope='module')
def config_case_results(trained, request):
  workdir, _ = trained

  def run(case):
    key, _, value = case
    settings = {k: v for k, v in _SMALL.items() if k != key}
    args = ['--config=configs/quick.py', f'--workdir={workdir}'] + [
        f'--config.{k}={_cli_value(v)}' for k, v in settings.items()] + [
            f'--config.{key}={value}']
    return _run(_command('main.py', *args))

  if os.environ.get('PYTEST_XDIST_WORKER'):
    # pytest-xdist hands the cases out to its workers one test at a time:
    # each worker runs the cases of its own tests (all of them here would
    # run every case once per worker).
    return _RunOnFirstUse(run)
  # The cases this session runs (one in the fast tier), two at a time.
  selected = {item.callspec.params['case'] for item in request.session.items
              if getattr(item, 'originalname', None) == _CONFIG_TEST}
  cases = [case for case in _CONFIG_CASES if case in selected]
  with concurrent.futures.ThreadPoolExecutor(_PARALLEL) as pool:
    return dict(zip(cases, pool.map(run, cases)))


class _RunOnFirstUse(dict):
  """``{case: result}`` that runs a case when it is first looked up."""

  def __init__(self, run):
    super().__init__()
    self._run = run

  def __missing__(self, case):
    self[case] = result = self._run(case)
    return result


@pytest.mark.parametrize('case',
                         [_config_case_param(c) for c in _CONFIG_CASES])
def test_a_bad_config_value_is_one_line_and_changes_nothing(
    case, config_case_results, trained):
  workdir, before = trained
  key = case[0]
  _assert_one_error_line(config_case_results[case], f'config.{key}')
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------
# The defect classes found by the hostile-input sweep.


def _main(workdir, *extra, **overrides):
  return _run(_command('main.py', *_main_args(workdir, **overrides), *extra))


@pytest.mark.slow  # A process; the same rerun in-process: test_main.py::test_main_trains_writes_outputs_and_resumes ("Nothing to train").
def test_a_noop_rerun_writes_nothing(trained):
  workdir, before = trained
  result = _main(workdir)  # The same finished run again.
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Nothing to train' in result.stderr
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_shorter_rerun_of_a_finished_run_writes_nothing(tmp_path):
  workdir = str(tmp_path / 'run')
  two = {'num_epochs': 2, 'learning_rate_table': ((1, 0.1), (2, 0.02))}
  assert _main(workdir, **two).returncode == 0
  before = snapshot(workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['complete']
  result = _main(workdir, num_epochs=1)
  assert result.returncode == 0 and 'Nothing to train' in result.stderr
  assert snapshot(workdir) == before  # results.json still says complete.


@pytest.mark.slow
@pytest.mark.parametrize('make_bad,names', [
    (lambda w: _replace_with_file(w, 'checkpoints'), ('checkpoints',
                                                      'is a file')),
    (lambda w: _replace_with_folder(w, 'metrics.jsonl'), ('metrics.jsonl',
                                                          'should be a file')),
    (lambda w: _replace_with_folder(w, 'config.json'), ('config.json',)),
    (lambda w: open(os.path.join(w, 'damaged_checkpoints'), 'w').close(),
     ('damaged_checkpoints', 'is a file')),
])
def test_a_workdir_entry_of_the_wrong_kind_fails_before_training(
    make_bad, names, trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  make_bad(workdir)
  before = snapshot(workdir)
  result = _main(workdir, num_epochs=2,
                 learning_rate_table=((1, 0.1), (2, 0.02)))
  _assert_one_error_line(result, *names)
  assert 'epoch 2/2' not in result.stderr  # No training step ran.
  assert snapshot(workdir) == before


def _replace_with_file(workdir, name):
  shutil.rmtree(os.path.join(workdir, name))
  with open(os.path.join(workdir, name), 'w') as f:
    f.write('not a folder')


def _replace_with_folder(workdir, name):
  os.remove(os.path.join(workdir, name))
  os.makedirs(os.path.join(workdir, name))


@pytest.mark.slow
def test_a_torn_last_metrics_line_is_skipped_on_resume(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  with open(metrics) as f:
    events = [json.loads(line) for line in f]
  with open(metrics, 'a') as f:
    f.write('{"step": 6, "epoch": 1.5, "spl')  # A crash mid-write.
  result = _main(workdir, num_epochs=2,
                 learning_rate_table=((1, 0.1), (2, 0.02)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert 'torn last line' in result.stderr
  with open(metrics) as f:
    resumed = [json.loads(line) for line in f]  # Every line is JSON again.
  assert resumed[:len(events)] == events
  assert [e['epoch'] for e in resumed if e['split'] == 'test'] == [1, 2]


@pytest.mark.slow
def test_a_damaged_metrics_line_before_the_last_stops_the_run(trained,
                                                              tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  with open(metrics) as f:
    lines = f.readlines()
  lines[0] = 'garbage\n'
  with open(metrics, 'w') as f:
    f.writelines(lines)
  before = snapshot(workdir)
  result = _main(workdir, num_epochs=2,
                 learning_rate_table=((1, 0.1), (2, 0.02)))
  _assert_one_error_line(result, 'metrics.jsonl line 1')
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_damaged_metrics_and_checkpoint_together_change_nothing(tmp_path):
  workdir = _two_checkpoints(tmp_path)
  _break_checkpoint(workdir, 8)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  with open(metrics) as f:
    lines = f.readlines()
  with open(metrics, 'w') as f:
    f.writelines(['garbage\n'] + lines)
  before = snapshot(workdir)
  result = _main(workdir, num_epochs=3,
                 learning_rate_table=((1, 0.1), (3, 0.02)))
  _assert_one_error_line(result, 'metrics.jsonl line 1')
  assert snapshot(workdir) == before  # The damaged step was not moved.


@pytest.mark.slow
def test_a_damaged_pretrained_checkpoint_is_one_line(tmp_path):
  workdir = _two_checkpoints(tmp_path)
  _break_checkpoint(workdir, 8)
  args = _main_args(str(tmp_path / 'eval'), mode='evaluate',
                    pretrained=workdir, head='linear', linear_pool_size=2,
                    blocks=('conv2',))
  _assert_one_error_line(_run(_command('main.py', *args)), 'step 8',
                         'is damaged', 'pretrained_step')
  assert not (tmp_path / 'eval').exists()


@pytest.mark.slow
def test_a_workdir_under_the_home_folder(tmp_path):
  env_home = tmp_path / 'home'
  env_home.mkdir()
  env = one_device_env(HOME=str(env_home))
  result = subprocess.run(
      _command('main.py', *_main_args('~/run')), cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(env_home / 'run')) == [
      'checkpoints', 'config.json', 'metrics.jsonl', 'results.json',
      'tensorboard']
  assert not os.path.exists(os.path.join(REPO_ROOT, '~'))


@pytest.mark.slow
def test_an_unwritable_default_cache_is_named(tmp_path):
  data = tmp_path / 'data'
  write_image_folder(str(data), per_class=4)
  home = tmp_path / 'home_is_a_file'
  home.write_text('')
  env = one_device_env(HOME=str(home))
  result = subprocess.run(
      _command('main.py', *_main_args(str(tmp_path / 'run'),
                                      dataset=str(data), batch_size=4,
                                      num_train_examples=0)),
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  _assert_one_error_line(result, 'config.cache_dir', 'is a file')
  assert not (tmp_path / 'run').exists()


def _two_checkpoints(tmp_path):
  workdir = str(tmp_path / 'run')
  result = _main(workdir, num_epochs=2, checkpoint_every_epochs=1,
                 learning_rate_table=((1, 0.1), (2, 0.02)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '4', '8']
  return workdir


def _break_checkpoint(workdir, step):
  """Deletes the array data of the `model` item of a checkpoint."""
  model = os.path.join(workdir, 'checkpoints', str(step), 'model')
  for root, _, files in os.walk(model):
    for name in files:
      if name != '_METADATA' and 'manifest' not in name:
        os.remove(os.path.join(root, name))


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path):
  workdir = _two_checkpoints(tmp_path)
  _break_checkpoint(workdir, 8)
  result = _main(workdir, num_epochs=3,
                 learning_rate_table=((1, 0.1), (3, 0.02)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert 'Checkpoint step 8 cannot be read' in result.stderr
  assert 'Resumed from' in result.stderr and 'at step 4' in result.stderr
  # The damaged step is kept aside, not deleted; training went on.
  assert os.listdir(os.path.join(workdir, 'damaged_checkpoints')) == ['8']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '12', '4']  # Epochs 2 and 3 were trained again; the last is saved.
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['complete']


@pytest.mark.slow
def test_no_readable_checkpoint_is_one_line_and_moves_nothing(tmp_path):
  workdir = _two_checkpoints(tmp_path)
  _break_checkpoint(workdir, 8)
  _break_checkpoint(workdir, 4)
  before = snapshot(workdir)
  result = _main(workdir, num_epochs=3,
                 learning_rate_table=((1, 0.1), (3, 0.02)))
  _assert_one_error_line(result, 'no checkpoint', 'can be read', 'step 8')
  assert snapshot(workdir) == before


def _fill(args, tmp_path, **extra):
  """`args` with ``=A_FILE`` (an existing file), ``=A_FOLDER`` (an existing
  folder) and ``=NAME`` for each of `extra` replaced by real paths."""
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  paths = {'A_FILE': a_file, 'A_FOLDER': tmp_path, **extra}
  filled = []
  for arg in args:
    for placeholder, value in paths.items():
      arg = arg.replace(f'={placeholder}', f'={value}')
    filled.append(arg)
  return filled


def _case(name, argv, *names):
  return _one_fast_case((argv, names), name, 'unknown-key')


@pytest.mark.parametrize('argv,names', [
    _case('config-file-missing', ['--config=configs/no_such.py',
                                  '--workdir=W'], '--config=configs/no_such',
          'no such file'),
    _case('config-file-syntax', ['--config=BAD_SYNTAX', '--workdir=W'],
          'cannot be loaded', 'SyntaxError'),
    _case('config-file-no-get-config', ['--config=NO_GET_CONFIG',
                                        '--workdir=W'], 'get_config'),
    _case('workdir-missing', ['--config=configs/quick.py'], '--workdir'),
    _case('workdir-empty', ['--config=configs/quick.py', '--workdir='],
          '--workdir is empty'),
    _case('workdir-under-a-file', ['--config=configs/quick.py',
                                   '--workdir=A_FILE/run'], 'is a file'),
    _case('extra-argument', ['--config=configs/quick.py', '--workdir=W',
                             'extra'], "unexpected arguments ['extra']"),
    _case('unknown-key', ['--config=configs/quick.py', '--workdir=W',
                          '--config.num_epoch=3'], "'num_epoch'",
          'Did you mean num_epochs'),
    _case('lr-table-not-pairs', ['--config=configs/quick.py', '--workdir=W',
                                 '--config.learning_rate_table=(1, 2)'],
          'config.learning_rate_table', 'pairs'),
    _case('lr-table-string-rate', [
        '--config=configs/quick.py', '--workdir=W',
        "--config.learning_rate_table=((10, 'fast'),)"],
          'config.learning_rate_table', 'finite numbers'),
    _case('rotation-angle-string', ['--config=configs/quick.py',
                                    '--workdir=W',
                                    "--config.rotations=(0, 'ninety')"],
          'config.rotations'),
    _case('rotations-equal-modulo-360', [
        '--config=configs/quick.py', '--workdir=W',
        '--config.rotations=(0, 360)'], 'config.rotations',
          'distinct modulo 360'),
    _case('split-the-dataset-lacks', ['--config=configs/quick.py',
                                      '--workdir=W',
                                      '--config.test_split=validation'],
          "not 'validation'"),
    _case('cache-dir-under-a-file', ['--config=configs/quick.py',
                                     '--workdir=W',
                                     '--config.cache_dir=A_FILE/cache'],
          'config.cache_dir', 'is a file'),
    _case('pretrained-in-pretext-mode', [
        '--config=configs/quick.py', '--workdir=W',
        '--config.pretrained=/some/run'], 'config.pretrained',
          "only used by mode='evaluate'"),
    _case('linear-pool-larger-than-features', [
        '--config=configs/eval_linear.py', '--workdir=W',
        '--config.pretrained=random', '--config.linear_pool_size=9'],
          'config.linear_pool_size=9', 'at most 8'),
])
def test_main_command_line(argv, names, tmp_path):
  bad_syntax = tmp_path / 'bad_syntax.py'
  bad_syntax.write_text('def get_config(:\n')
  no_get_config = tmp_path / 'no_get_config.py'
  no_get_config.write_text('x = 1\n')
  args = _fill(argv, tmp_path, W=tmp_path / 'run', BAD_SYNTAX=bad_syntax,
               NO_GET_CONFIG=no_get_config)
  result = _run(_command('main.py', *args))
  _assert_one_error_line(result, *names)
  assert not (tmp_path / 'run').exists()  # Nothing was created.


@pytest.mark.slow
def test_the_label_map_is_saved_with_the_run(tmp_path):
  data = tmp_path / 'data'
  write_image_folder(str(data), per_class=8)
  workdir = str(tmp_path / 'run')
  settings = dict(mode='supervised', dataset=str(data), batch_size=8,
                  num_train_examples=0, cache_dir=str(tmp_path / 'cache'))
  assert _main(workdir, **settings).returncode == 0
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['network']['classes'] == [
        'class_0', 'class_1', 'class_2']
  before = snapshot(workdir)
  # Renamed in both splits (so the splits agree): the labels the
  # checkpoints learned would now mean other classes.
  for split in ('train', 'test'):
    os.rename(data / split / 'class_1', data / split / 'class_9')
  result = _main(workdir, num_epochs=2,
                 learning_rate_table=((1, 0.1), (2, 0.02)), **settings)
  _assert_one_error_line(result, 'classes', 'class_9')
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_a_symlink_loop_in_a_dataset_is_named(tmp_path):
  data = tmp_path / 'data'
  write_image_folder(str(data), per_class=4)
  loop = data / 'train' / 'class_0'
  os.symlink(loop / 'b', loop / 'a')
  os.symlink(loop / 'a', loop / 'b')
  for pipeline in ('device', 'tfdata'):
    result = _main(str(tmp_path / 'run'), dataset=str(data), batch_size=4,
                   num_train_examples=0, pipeline=pipeline,
                   cache_dir=str(tmp_path / 'cache'))
    _assert_one_error_line(result, 'Too many levels of symbolic links',
                           str(loop) + '/')
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_an_evaluation_run_passed_as_pretrained_is_named(trained, tmp_path):
  evaluation = str(tmp_path / 'eval')
  args = _main_args(evaluation, mode='evaluate', pretrained=trained[0],
                    head='linear', linear_pool_size=2, blocks=('conv2',))
  assert _run(_command('main.py', *args)).returncode == 0
  args = _main_args(str(tmp_path / 'eval2'), mode='evaluate',
                    pretrained=evaluation, head='linear',
                    linear_pool_size=2, blocks=('conv2',))
  _assert_one_error_line(_run(_command('main.py', *args)),
                         'holds an evaluation run', trained[0])


@pytest.mark.slow
def test_a_full_disk_is_one_line_before_training(tmp_path):
  mount = tmp_path / 'small_disk'
  mount.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k',
                            'tmpfs', str(mount)], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip('cannot mount a small tmpfs here (needs root)')
  try:
    # A quarter-width NIN: a checkpoint needs about 1 MB.
    result = _main(str(mount / 'run'), **{'model.width': 0.25})
    line = _assert_one_error_line(result, 'no space left', str(mount / 'run'),
                                  'bytes free', 'needs about')
    assert 'epoch 1/1 step' not in result.stderr, line
    assert os.listdir(mount) == []
    # A finished run needs no space to say it has nothing to train.
    small = str(mount / 'small')
    assert _main(small).returncode == 0
    with open(mount / 'filler', 'wb') as f:
      f.write(b'x' * (shutil.disk_usage(mount).free - 4096))
    before = snapshot(small)
    result = _main(small)
    assert result.returncode == 0 and 'Nothing to train' in result.stderr
    assert snapshot(small) == before
  finally:
    subprocess.run(['umount', str(mount)], check=False)


# ---------------------------------------------------------------------------
# reproduce, report, benchmark.


@pytest.mark.parametrize('args,names', _one_fast([
    (['smoke', '--root=ROOT', '--seeds=a,b'], ('--seeds',)),
    (['smoke', '--root=A_FILE'], ('--root', 'is a file')),
    (['smoke', '--root=ROOT', '--epochs_scale=0'], ('--epochs_scale',)),
    (['smoke', '--root=ROOT', '--epochs_scale=-1'], ('--epochs_scale',)),
    (['smoke', '--root=ROOT', '--ks=0'], ('--ks',)),
    (['smoke', '--root=ROOT', '--width=0'], ('--width',)),
    (['smoke', '--root=ROOT', '--pipeline=gpu'], ('config.pipeline',)),
    (['table9', '--root=ROOT'], ('table9',)),
    (['--root=ROOT'], ('give one table',)),
    (['smoke'], ('--root',)),
], ['seeds', 'root-file', 'scale-0', 'scale-negative', 'ks', 'width',
    'pipeline', 'table', 'no-table', 'no-root'], 'seeds'))
def test_reproduce_command_line(args, names, tmp_path):
  args = _fill(args, tmp_path, ROOT=tmp_path / 'root')
  result = _run(_command('rotnet_jax.reproduce', *args))
  _assert_one_error_line(result, *names)
  assert not (tmp_path / 'root').exists()


def test_report_names_unreadable_results_and_reports_the_rest(tmp_path):
  good = tmp_path / 'seed0' / 'good'
  good.mkdir(parents=True)
  (good / 'results.json').write_text(json.dumps({
      'experiment': 'table3/rotnet_conv', 'dataset': 'digits',
      'pipeline': 'device', 'num_epochs': 1, 'complete': True,
      'model_width': 1.0, 'heads': [{
          'head': 'conv2', 'final_test_accuracy': 0.5,
          'best_test_accuracy_test_selected': 0.5,
          'best_epoch_test_selected': 1, 'test_samples': 297}]}))
  truncated = tmp_path / 'seed0' / 'truncated'
  truncated.mkdir()
  (truncated / 'results.json').write_text('{"experiment": "x", "hea')
  incomplete = tmp_path / 'seed0' / 'incomplete'
  incomplete.mkdir()
  (incomplete / 'results.json').write_text('{"experiment": "y"}')
  result = _run(_command('rotnet_jax.report', str(tmp_path)))
  assert result.returncode == 0, result.stderr
  assert '| RotNet + conv | conv2 | 91.16 | 50.00 |' in result.stdout
  warnings = result.stderr.strip().splitlines()
  assert len(warnings) == 2 and 'Traceback' not in result.stderr
  assert str(truncated / 'results.json') in result.stderr
  assert str(incomplete / 'results.json') in result.stderr


@pytest.mark.parametrize('args,names', _one_fast([
    ([], ('give one folder',)),
    (['/no/such/folder'], ('/no/such/folder', 'is not a folder')),
    (['a', 'b'], ('give one folder',)),
], ['none', 'missing', 'two'], 'missing'))
def test_report_command_line(args, names):
  _assert_one_error_line(_run(_command('rotnet_jax.report', *args)), *names)


@pytest.mark.parametrize('args,names', _one_fast([
    (['--sources=bogus'], ('--sources',)),
    (['--steps=0'], ('--steps',)),
    (['--warmup=-1'], ('--warmup',)),
    (['--examples=0'], ('--examples',)),
    (['--examples=10'], ('--examples=10', 'batch_size=128')),
    (['--config.batch_size=0'], ('config.batch_size',)),
    (['extra'], ('unexpected arguments',)),
    (['--output=A_FILE/bench.json'], ('--output', 'is a file')),
    (['--output=A_FOLDER'], ('--output', 'is a folder')),
], ['sources', 'steps', 'warmup', 'examples', 'examples-vs-batch', 'config',
    'extra', 'output', 'output-folder'], 'examples-vs-batch'))
def test_benchmark_command_line(args, names, tmp_path):
  args = _fill(args, tmp_path)
  result = _run(_command('rotnet_jax.benchmark', '--config=configs/cifar.py',
                         *args))
  _assert_one_error_line(result, *names)


@pytest.mark.slow
def test_a_diverged_run_stops_naming_the_step_and_keeps_its_checkpoint(
    tmp_path):
  """A NaN loss: one error line naming the head and the step, exit 3, and
  the epoch-1 checkpoint is the newest (nothing of the NaN steps saved)."""
  workdir = tmp_path / 'run'
  # Epoch 2 diverges and logs nothing mid-epoch: the check at its end must
  # stop the run before its test pass and its checkpoint.
  result = _run(_command('main.py', *_main_args(
      workdir, num_epochs=3, learning_rate_table=((1, 0.1), (3, 1e30)),
      batch_size=64, checkpoint_every_epochs=1, eval_every_epochs=1,
      log_every_steps=100)))
  assert result.returncode == 3, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert re.search(r'rotation loss is nan at step \d+ \(epoch 1\.\d+\)',
                   errors[0]), errors[0]
  assert os.listdir(workdir / 'checkpoints') == ['4']  # 256 / 64 steps.
  with open(workdir / 'metrics.jsonl') as f:
    events = [json.loads(l) for l in f]
  # Epoch 1's test pass, and nothing of epoch 2.
  assert [(e['split'], e['epoch']) for e in events] == [('test', 1)]
  assert all(math.isfinite(e['loss']) for e in events)
  assert not os.path.exists(workdir / 'run.lock')  # Released on the way out.


# One run per workdir.


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_is_refused_at_once(tmp_path):
  workdir = tmp_path / 'run'
  env = one_device_env()
  first = subprocess.Popen(
      _command('main.py', *_main_args(workdir, num_epochs=30)),
      cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  try:
    lock_file = workdir / 'run.lock'
    deadline = time.time() + 240
    while not lock_file.exists() and first.poll() is None:
      assert time.time() < deadline, 'the first run never took the lock'
      time.sleep(0.2)
    holder = json.loads(lock_file.read_text())
    assert holder['pid'] == first.pid
    second = _run(_command('main.py', *_main_args(workdir, num_epochs=30)))
    _assert_one_error_line(second, 'in use by another run',
                           f"process {first.pid}", holder['started'],
                           holder['host'])
    assert first.poll() is None  # The first run goes on, undisturbed.
  finally:
    # Stopped as a preemption stops it (its 30 epochs would take minutes):
    # it saves, exits and lets go of the workdir.
    if first.poll() is None:
      first.send_signal(signal.SIGTERM)
    first.wait(timeout=600)
  assert first.returncode == preemption.PREEMPTED_STATUS, (
      first.stderr.read()[-2000:])
  assert not (workdir / 'run.lock').exists()


def _dead_pid():
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_another_hosts_is_not(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  lock_file = workdir / 'run.lock'
  # A run of this host that was killed: its process is gone.
  lock_file.write_text(json.dumps({'host': socket.gethostname(),
                                   'pid': _dead_pid(), 'started': 'then'}))
  result = _run(_command('main.py', *_main_args(workdir)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Taking over the stale lock' in result.stderr
  assert not lock_file.exists()
  # A lock of another host cannot be checked: refused, nothing changed.
  lock_file.write_text(json.dumps({'host': 'elsewhere', 'pid': 1,
                                   'started': '2026-01-01T00:00:00'}))
  before = snapshot(workdir)
  result = _run(_command('main.py', *_main_args(workdir, num_epochs=2)))
  _assert_one_error_line(result, 'host elsewhere', 'delete')
  assert snapshot(workdir) == before
