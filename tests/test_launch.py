"""The launch scripts: syntax, shellcheck, and what `--dry-run` would run.

Nothing here talks to Google Cloud or SLURM: `tpu_vm.sh --dry-run` prints
its gcloud commands, and the remote command of `run` and `stop` is executed
locally against a fake `python3` to see the arguments arrive unchanged.
"""

import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest

from helpers import REPO_ROOT

LAUNCH = os.path.join(REPO_ROOT, 'launch')
TPU_VM = os.path.join(LAUNCH, 'tpu_vm.sh')
SBATCH = os.path.join(LAUNCH, 'slurm.sbatch')
SCRIPTS = [TPU_VM, SBATCH]
BASH = shutil.which('bash')
SSH = '+ gcloud compute tpus tpu-vm ssh r1 --zone=us-central2-b --worker=all '
INSTALL = ("python3 -m pip install -U 'jax[tpu]' && "
           "python3 -m pip install -e '.[tf]'")
# Values a shell would split or reinterpret if quoted carelessly.
TRICKY_ARGS = [
    '--config=configs/cifar.py',
    '--workdir=/mnt/disks/data/run 1',
    "--config.learning_rate_table=((30, 0.1), (60, 0.02))",
    '--config.experiment=it\'s "quoted" $HOME `date` ;&|<>*?',
    'two\nlines',
    '',
]


def _tpu_vm(*args, env=None):
  return subprocess.run([BASH, TPU_VM, *args], capture_output=True,
                        text=True, env=env, timeout=30, check=False)


def _dry_run(*args):
  result = _tpu_vm('--dry-run', *args)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  return result.stdout


def _remote_command(line):
  """The shell command a dry-run `... ssh ... --command=CMD` line sends."""
  assert line.startswith(SSH), line
  words = shlex.split(line[2:])
  return words[-1].removeprefix('--command=')


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  subprocess.run([BASH, '-n', script], check=True)


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  if not shutil.which('shellcheck'):
    pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
  result = subprocess.run(['shellcheck', '--shell=bash', script],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout


def test_help():
  for args in (['--help'], ['run', '-h'], ['help']):
    result = _tpu_vm(*args)
    assert result.returncode == 0
    assert result.stdout.startswith('Usage: launch/tpu_vm.sh')


def test_create():
  assert _dry_run('create', '--name=r1', '--zone=us-central2-b',
                  '--accelerator=v4-8') == (
                      '+ gcloud compute tpus tpu-vm create r1 '
                      '--zone=us-central2-b --accelerator-type=v4-8 '
                      '--version=tpu-ubuntu2204-base\n')
  # `--opt value` works too, and --dry-run counts anywhere.
  assert _tpu_vm('create', '--name', 'r1', '--zone', 'us-west4-a',
                 '--project=p', '--accelerator=v5litepod-8', '--spot',
                 '--dry-run').stdout == (
                     '+ gcloud compute tpus tpu-vm create r1 '
                     '--zone=us-west4-a --project=p '
                     '--accelerator-type=v5litepod-8 '
                     '--version=v2-alpha-tpuv5-lite --spot\n')
  assert _dry_run('create', '--name=r1', '--zone=z', '--accelerator=v6e-8',
                  '--version=my-runtime').endswith(
                      '--accelerator-type=v6e-8 --version=my-runtime\n')
  assert _dry_run('create', '--name=r1', '--zone=z', '--accelerator=v4-8',
                  '--data-disk=source=projects/p/zones/z/disks/d,mode=read-write'
                 ).endswith('--version=tpu-ubuntu2204-base '
                            '--data-disk=source=projects/p/zones/z/disks/d,'
                            'mode=read-write\n')


def _commands(out):
  """The dry-run lines as argument lists, as a shell would split them."""
  assert all(line.startswith('+ gcloud ') for line in out.splitlines()), out
  return [shlex.split(line[2:]) for line in out.splitlines()]


def test_setup():
  ssh = shlex.split(SSH[2:])
  assert _commands(_dry_run('setup', '--name=r1', '--zone=us-central2-b',
                            '--ref=v1.0')) == [ssh + [
      '--command=rm -rf ~/rotnet-jax && git clone '
      'https://github.com/rotnet-jax/rotnet-jax ~/rotnet-jax '
      '&& cd ~/rotnet-jax && git checkout v1.0 && ' + INSTALL]]
  copy = _dry_run('setup', '--name=r1', '--zone=us-central2-b', '--copy')
  assert _commands(copy) == [
      ssh + ['--command=rm -rf ~/rotnet-jax'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse', REPO_ROOT,
       'r1:~/rotnet-jax', '--zone=us-central2-b', '--worker=all'],
      ssh + ['--command=cd ~/rotnet-jax && ' + INSTALL]]
  # The printed form, for the README's readers.
  assert copy.splitlines()[0] == SSH + "'--command=rm -rf ~/rotnet-jax'"


def test_setup_repo_url_from_environment():
  env = dict(os.environ, REPO_URL='https://example.com/me/fork')
  out = _tpu_vm('--dry-run', 'setup', '--name=r1', '--zone=z', env=env).stdout
  assert 'git clone https://example.com/me/fork ~/rotnet-jax' in out
  assert 'git checkout' not in out


def test_logs_stop_delete():
  assert _dry_run('logs', '--name=r1', '--zone=us-central2-b') == (
      '+ gcloud compute tpus tpu-vm ssh r1 --zone=us-central2-b --worker=0 '
      "'--command=tail -n 100 -F ~/rotnet_logs/r1-$(hostname).log'\n")
  stop = _dry_run('stop', '--name=r1', '--zone=us-central2-b')
  assert stop.startswith(SSH) and stop.count('\n') == 1
  assert 'kill "$pid"' in _remote_command(stop)
  assert _dry_run('delete', '--name=r1', '--zone=us-central2-b') == (
      '+ gcloud compute tpus tpu-vm delete r1 --zone=us-central2-b\n')


def _fake_worker(tmp_path):
  """A home folder with a checkout and a `python3` that prints its argv."""
  home = tmp_path / 'home'
  (home / 'rotnet-jax').mkdir(parents=True)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  python3 = bin_dir / 'python3'
  # Prints the arguments, one per NUL-terminated record, then waits to be
  # stopped like a training run, which takes a moment to save on SIGTERM.
  python3.write_text('#!/bin/bash\nprintf "%s\\0" "$@"\n'
                     "trap 'sleep 1; exit 0' TERM\nsleep 30 & wait\n")
  python3.chmod(0o755)
  env = dict(os.environ, HOME=str(home),
             PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  return home, env


def _wait_for(condition, seconds=10):
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.05)


def test_run_round_trips_arguments_and_stop_kills(tmp_path):
  lines = _dry_run('run', '--name=r1', '--zone=us-central2-b', '--',
                   *TRICKY_ARGS).splitlines()
  assert len(lines) == 1
  remote = _remote_command(lines[0])
  assert 'nohup python3 main.py ' in remote

  # What a worker's shell does with it: start main.py in the background,
  # return at once, leave a log and a pid file.
  home, env = _fake_worker(tmp_path)
  started = subprocess.run([BASH, '-c', remote], env=env, capture_output=True,
                           text=True, timeout=10, check=True)
  assert 'started, log' in started.stdout
  logs = home / 'rotnet_logs'
  pid = int((logs / 'r1.pid').read_text())
  try:
    log = logs / f'r1-{os.uname().nodename}.log'
    expected = '\0'.join(['main.py', *TRICKY_ARGS]) + '\0'
    _wait_for(lambda: log.exists() and log.read_text() == expected)

    # A second start while one runs is refused.
    again = subprocess.run([BASH, '-c', remote], env=env, capture_output=True,
                           text=True, timeout=10, check=False)
    assert again.returncode == 1 and 'already running' in again.stderr

    stop = _remote_command(_dry_run('stop', '--name=r1',
                                    '--zone=us-central2-b'))
    subprocess.run([BASH, '-c', stop], env=env, timeout=10, check=True)
    assert not (logs / 'r1.pid').exists()
    # stop returns once the run has saved and exited.
    assert not _alive(pid)
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _alive(pid):
  # The fake run is not our child (nohup in a backgrounded shell), so it is
  # reaped by init; a zombie would still answer kill 0, so read its state.
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


@pytest.mark.parametrize('args, message', [
    (['create', '--name=r1', '--zone=z', '--accelerator=v9-8'],
     "unknown accelerator type 'v9-8'; valid: v4-8 v4-16 v4-32 v4-64 "
     'v5litepod-1 v5litepod-4 v5litepod-8 v5litepod-16 v5p-8 v5p-16 v5p-32 '
     'v6e-1 v6e-4 v6e-8 v6e-16'),
    (['create', '--name=r1', '--accelerator=v4-8'], '--zone is required'),
    (['run', '--name=r1', '--zone=z'], 'run needs main.py'),
    (['launch', '--name=r1', '--zone=z'], "unknown command 'launch'"),
    (['stop', '--name=R_1', '--zone=z'], "--name='R_1'"),
    (['setup', '--name=r1', '--zone=z', '--ref=x', '--copy'], 'not both'),
    (['logs', '--name=r1', '--zone=z', '--spot'], 'belong to create'),
    (['stop', '--name=r1', '--zone=z', '--frobnicate'], 'unknown option'),
    (['keep-running', '--name=r1', '--zone=z', '--', '--workdir=w'],
     'keep-running needs --accelerator'),
    (['keep-running', '--name=r1', '--zone=z', '--accelerator=v4-8'],
     "keep-running needs main.py's arguments"),
    (['keep-running', '--name=r1', '--zone=z', '--accelerator=v4-8',
      '--interval=0', '--', '--workdir=w'], 'give whole seconds'),
    (['run', '--name=r1', '--zone=z', '--interval=5', '--', '--workdir=w'],
     '--interval belongs to keep-running'),
])
def test_usage_errors_exit_2(args, message):
  result = _tpu_vm('--dry-run', *args)
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.count('\n') == 1
  assert result.stderr.startswith('tpu_vm.sh: error: ')
  assert message in result.stderr


def test_no_gcloud_without_dry_run(tmp_path):
  # A PATH with bash alone: the script needs only its builtins to get to
  # the gcloud check (gcloud may well be installed on this machine).
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'bash').symlink_to(BASH)
  result = _tpu_vm('create', '--name=r1', '--zone=z', '--accelerator=v4-8',
                   env={'PATH': str(bin_dir)})
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.count('\n') == 1
  assert 'install the Google Cloud SDK' in result.stderr
  # --dry-run needs no gcloud.
  result = _tpu_vm('--dry-run', 'delete', '--name=r1', '--zone=z',
                   env={'PATH': str(bin_dir)})
  assert result.returncode == 0, result.stderr


def test_sbatch_passes_arguments_to_srun(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  srun = bin_dir / 'srun'
  srun.write_text('#!/bin/bash\nprintf "%s\\0" "$@"\n')
  srun.chmod(0o755)
  env = dict(os.environ, SLURM_SUBMIT_DIR=str(tmp_path),
             PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  result = subprocess.run([BASH, SBATCH, *TRICKY_ARGS], env=env,
                          capture_output=True, text=True, timeout=10,
                          check=True)
  assert result.stdout == '\0'.join(['python', 'main.py', *TRICKY_ARGS]) + '\0'
  with open(SBATCH) as f:
    directives = [l for l in f if l.startswith('#SBATCH')]
  assert '#SBATCH --ntasks-per-node=1\n' in directives
  assert any(l.startswith('#SBATCH --nodes=') for l in directives)
  assert any(l.startswith('#SBATCH --gpus-per-node=') for l in directives)
  assert any(l.startswith('#SBATCH --time=') for l in directives)


def _fake_gcloud(tmp_path, states, worker0_running):
  """A `gcloud` that logs its calls and answers from two scripted queues.

  `describe` prints the next of `states` (MISSING: fails, as gcloud does for
  an unknown TPU); the worker-0 `ssh` check succeeds when the next of
  `worker0_running` is True; everything else succeeds silently.
  """
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (tmp_path / 'states').write_text(''.join(f'{s}\n' for s in states))
  (tmp_path / 'running').write_text(
      ''.join(f'{int(r)}\n' for r in worker0_running))
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(f'''#!/bin/bash
echo "$*" >> {tmp_path}/calls
pop() {{ head -n 1 "$1"; sed -i 1d "$1"; }}
case "$*" in
  *" describe "*) state="$(pop {tmp_path}/states)"
    [ "$state" = MISSING ] && exit 1; echo "$state" ;;
  *"--worker=0"*) [ "$(pop {tmp_path}/running)" = 1 ] ;;
esac
''')
  gcloud.chmod(0o755)
  return dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')


def test_keep_running_recreates_a_preempted_tpu_until_the_run_ends(tmp_path):
  env = _fake_gcloud(
      tmp_path,
      states=['READY', 'PREEMPTED', 'CREATING', 'READY', 'READY'],
      worker0_running=[True, True, False])
  result = subprocess.run(
      [BASH, TPU_VM, 'keep-running', '--name=r1', '--zone=z',
       '--accelerator=v5litepod-8', '--spot', '--ref=main', '--interval=1',
       '--', '--config=configs/cifar.py', '--workdir=gs://bucket/run 1'],
      env=env, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  assert 'the run has ended on r1' in result.stdout
  calls = (tmp_path / 'calls').read_text().splitlines()
  kinds = [' '.join(c.split()[3:4]) +
           (' worker0' if '--worker=0' in c else '') for c in calls]
  # Running; preempted: delete, create, setup, run; creating: wait; ready
  # and running; ready and ended: stop watching.
  assert kinds == ['describe', 'ssh worker0',
                   'describe', 'delete', 'create', 'ssh', 'ssh',
                   'describe',
                   'describe', 'ssh worker0',
                   'describe', 'ssh worker0'], calls
  assert '--spot' in calls[4] and '--quiet' in calls[3]
  assert "'--workdir=gs://bucket/run 1'" in calls[6] or (
      '--workdir=gs://bucket/run\\ 1' in calls[6]), calls[6]


def test_keep_running_starts_a_run_on_a_ready_idle_tpu(tmp_path):
  env = _fake_gcloud(tmp_path, states=['READY', 'READY'],
                     worker0_running=[False, False])
  result = subprocess.run(
      [BASH, TPU_VM, 'keep-running', '--name=r1', '--zone=z',
       '--accelerator=v4-8', '--interval=1', '--', '--workdir=gs://b/r'],
      env=env, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  calls = (tmp_path / 'calls').read_text().splitlines()
  # Idle: start the run (no create, no setup); then it has ended.
  assert len(calls) == 5, calls
  assert 'nohup python3 main.py' in calls[2]
  assert not any(' create ' in c or ' delete ' in c for c in calls)
