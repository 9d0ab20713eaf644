"""Printed command lines run as printed; shape flags run or are refused.

``python -m rotnet_jax.reproduce TABLE --dry_run`` prints one ``main.py``
command per job. Each is parsed here by the train command's own flag
definitions (``commands/train._define_flags``, into a fresh ``FlagValues``
so the tests' process keeps its global flags) and checked as a run would
check it, without training: it must give exactly the config the runner
would run. An evaluation's shape keys (``--config.image_size`` ...) given
on the command line run when they match the pretrained weights and are
refused in one line, naming the key and both values, when they do not.
"""

import functools
import json
import os
import shlex
import shutil
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from helpers import REPO_ROOT
from rotnet_jax.commands import cli
from rotnet_jax.commands import train as train_command
from rotnet_jax.errors import ConfigError
from rotnet_jax.experiments import reproduce
from rotnet_jax.training import train
from rotnet_jax.training import validation
from rotnet_jax.workdir import run_files


class _Into:
  """`module` (``absl.flags``, ``config_flags``) defining its flags in
  `flag_values` instead of the process-wide ``flags.FLAGS``."""

  def __init__(self, module, flag_values):
    self._module = module
    self._flag_values = flag_values

  def __getattr__(self, name):
    attribute = getattr(self._module, name)
    if name.startswith(('DEFINE', 'mark_flag')):
      return functools.partial(attribute, flag_values=self._flag_values)
    return attribute


def _parse(line: str, monkeypatch) -> flags.FlagValues:
  """The flags of the printed ``python main.py ...`` `line`, parsed.

  The train command's real flag definitions, in a fresh ``FlagValues``;
  config files are found relative to the repository root, as the printed
  ``--config=configs/...`` expects.
  """
  argv = shlex.split(line)
  assert argv[:2] == ['python', 'main.py'], line
  argv = argv[1:]
  flag_values = flags.FlagValues()
  monkeypatch.chdir(REPO_ROOT)
  with monkeypatch.context() as patch:
    patch.setattr(train_command, 'flags', _Into(flags, flag_values))
    patch.setattr(train_command, 'config_flags',
                  _Into(config_flags, flag_values))
    # config_flags finds the --config.KEY overrides in sys.argv.
    patch.setattr(sys, 'argv', argv)
    train_command._define_flags()  # pylint: disable=protected-access
    try:
      remaining = flag_values(argv)
      flag_values.config.keys()  # The file loads on first access.
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f'{line}\ndoes not parse: {type(e).__name__}: {e}')
  assert remaining == ['main.py'], line
  return flag_values


def _dry_run(table, root, capsys, monkeypatch, **kwargs):
  """The lines a dry run of `table` prints, and the config of each job.

  Returns:
    ``[(line, workdir, config)]``: the config is the one the runner would
    run in that workdir (checked, shape keys filled where it can).
  """
  configs = {}
  command_line = reproduce.command_line

  def recorded(job, config, workdir):
    configs[workdir] = config
    return command_line(job, config, workdir)

  monkeypatch.setattr(reproduce, 'command_line', recorded)
  capsys.readouterr()
  workdirs = reproduce.reproduce(table, str(root), dry_run=True, **kwargs)
  # The proposals jobs' rotnet-proposals lines have no workdir nor config.
  lines = [line for line in capsys.readouterr().out.splitlines()
           if not line.startswith(f'{reproduce.PROPOSALS_COMMAND} ')]
  assert len(lines) == len(workdirs)
  return [(line, w, configs[w]) for line, w in zip(lines, workdirs)]


def _check_runs_as_printed(line, workdir, config, monkeypatch):
  parsed = _parse(line, monkeypatch)
  assert parsed.workdir == workdir, line
  # The config the command gives, checked as its run would check it, is
  # the one the runner runs (shape keys filled from existing weights).
  checked = validation.check_config(parsed.config)
  assert (run_files.resolved_config(checked) ==
          run_files.resolved_config(config)), line
  return checked


@pytest.mark.parametrize('table', reproduce.TABLES)
def test_every_printed_quick_command_parses_as_its_job(table, tmp_path,
                                                       capsys, monkeypatch):
  # --quick's overrides: 1/16 width on every job (an evaluation's
  # model.width flag), 64-pixel AlexNets (image_size); table1 passes
  # model.num_blocks, the smoke table a random NIN's filled shape.
  folder = str(tmp_path / 'images')  # The AlexNet tables' image folder.
  # As `--quick --dataset=FOLDER` runs it: the Places probes (if any) read
  # the same folder; the PASCAL VOC jobs (if any) a VOCdevkit folder.
  places = any(job.places for job in reproduce.table_jobs(table))
  voc = any(job.voc for job in reproduce.table_jobs(table))
  devkit = tmp_path / 'VOCdevkit'
  for year in ('VOC2007', 'VOC2012'):
    (devkit / year).mkdir(parents=True)
  jobs = _dry_run(
      table, tmp_path / 'root', capsys, monkeypatch,
      scale=reproduce.QUICK_SCALE, ks=(20,),
      overrides=reproduce.quick_overrides(table, folder),
      places_dataset=folder if places else None,
      voc_dataset=str(devkit) if voc else None, quick=True)
  evaluations = [line for line, _, config in jobs
                 if config.mode in ('evaluate', 'transfer')]
  # Every evaluation's printed command sets a shape key (the width).
  assert evaluations and all(
      '--config.model.width=0.0625' in line.split() for line in evaluations)
  for line, workdir, config in jobs:
    _check_runs_as_printed(line, workdir, config, monkeypatch)


@pytest.mark.slow  # About 12 s.
def test_printed_commands_carry_the_shape_of_existing_weights(
    tiny_pretext_run, tmp_path, capsys, monkeypatch):
  # Once the pretext run exists, the evaluation's printed command names
  # the shape read from it (a NIN-3 of width 1/32): it must still parse,
  # and match the weights.
  root = tmp_path / 'root'
  shutil.copytree(tiny_pretext_run, root / 'seed0' / 'smoke' / 'pretext')
  jobs = _dry_run('smoke', root, capsys, monkeypatch,
                  overrides={'model.width': 1 / 32})
  (line, workdir, config), = [j for j in jobs
                              if j[1].endswith('rotnet_linear')]
  for flag in ('--config.model.name=nin', '--config.model.num_blocks=3',
               '--config.image_size=32', '--config.model.width=0.03125'):
    assert flag in line.split(), line
  checked = _check_runs_as_printed(line, workdir, config, monkeypatch)
  assert (checked.model.num_blocks, checked.image_size) == (3, 32)


def _knn_command(pretrained, workdir, *shape_flags):
  # Training-free k-NN: the cheapest real evaluation. 100 images per batch
  # do not split over the tests' 8 fake devices, so main() on the whole
  # mesh can never start training in this process.
  return ' '.join([
      'python main.py --config=configs/eval_knn.py', f'--workdir={workdir}',
      f'--config.pretrained={pretrained}', '--config.dataset=digits',
      '--config.num_train_examples=500', '--config.batch_size=100',
      '--config.knn_k=20', "--config.blocks=\"('conv2',)\"", *shape_flags])


def test_an_evaluation_runs_with_shape_flags_that_match(
    tiny_pretext_run, tmp_path, monkeypatch, one_device_mesh):
  workdir = str(tmp_path / 'knn')
  parsed = _parse(_knn_command(
      tiny_pretext_run, workdir, '--config.image_size=32',
      '--config.model.num_blocks=3', '--config.model.width=0.03125'),
                  monkeypatch)
  # The driver main.py calls, on one device (the tests' process has 8).
  results = train.train_and_evaluate(parsed.config, parsed.workdir,
                                     mesh=one_device_mesh)
  assert results['complete'] and results['heads'][0]['block'] == 'conv2'
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert (saved['image_size'], saved['model']['num_blocks'],
          saved['model']['name']) == (32, 3, 'nin')


@pytest.mark.parametrize('flag,named', [
    ('--config.image_size=48', ('config.image_size=48', 'image_size=32',
                                '--config.image_size=32')),
    ('--config.model.width=0.5', ('config.model.width=0.5',
                                  'width=0.03125')),
    ('--config.model.name=alexnet', ("config.model.name='alexnet'",
                                     "name='nin'")),
], ids=['image_size', 'width', 'name'])
def test_a_shape_flag_that_differs_is_refused_naming_it(
    flag, named, tiny_pretext_run, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / 'knn'
  parsed = _parse(_knn_command(tiny_pretext_run, workdir, flag),
                  monkeypatch)
  # The train command's main, as main.py runs it after parsing: one
  # error line, exit status 2, nothing written.
  monkeypatch.setattr(train_command, 'FLAGS', parsed)
  monkeypatch.setattr(cli, 'quiet_library_logs', lambda: None)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    train_command.main(['main.py'])
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  errors = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and 'Traceback' not in stderr, stderr
  assert all(n in errors[0] for n in named), errors[0]
  assert not workdir.exists()


def test_the_check_names_every_differing_key(tiny_pretext_run):
  config = reproduce.load_config_file('eval_linear.py')
  config.pretrained = tiny_pretext_run
  config.dataset = 'digits'
  config.image_size = 64
  config.model.num_blocks = 4
  with pytest.raises(ConfigError) as error:
    validation.check_config(config)
  message = str(error.value)
  assert '\n' not in message
  for part in ('config.model.num_blocks=4', 'config.image_size=64',
               'num_blocks=3', 'image_size=32'):
    assert part in message, message
