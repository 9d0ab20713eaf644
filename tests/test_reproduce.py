"""The reproduction runner and the report, end to end on the bundled data."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from helpers import write_results as _write_results
from rotnet_jax.commands import report as report_command
from rotnet_jax.experiments import paper
from rotnet_jax.experiments import report
from rotnet_jax.experiments import reproduce
from rotnet_jax.training import metrics as metrics_lib


def test_smoke_table_runs_pretext_and_probes_end_to_end(tmp_path, capsys):
  # pretext -> checkpoint -> evaluation -> report, through the runner.
  root = str(tmp_path)
  workdirs = reproduce.reproduce('smoke', root)
  assert [os.path.relpath(w, root) for w in workdirs] == [
      'seed0/smoke/pretext', 'seed0/smoke/rotnet_linear',
      'seed0/smoke/random_linear']
  pretext_events = metrics_lib.read_jsonl(workdirs[0])
  train_events = [e for e in pretext_events if e['split'] == 'train']
  test_events = [e for e in pretext_events if e['split'] == 'test']
  assert [e['epoch'] for e in test_events] == [1, 2, 3]
  assert train_events[-1]['loss'] < train_events[0]['loss']
  # Rotation prediction is learned: chance is 25%.
  assert test_events[-1]['accuracy'] > 0.4, test_events
  with open(os.path.join(workdirs[0], 'results.json')) as f:
    (pretext_result,) = json.load(f)['heads']
  assert pretext_result['final_test_accuracy'] == test_events[-1]['accuracy']
  assert pretext_result['test_samples'] == 297 * 4

  rows = {(r['experiment'], r['head']): r for r in report.collect(root)}
  rotnet = rows[('smoke/rotnet_linear', 'conv2')]['final']
  random = rows[('smoke/random_linear', 'conv2')]
  # Both probes learn the digits (chance: 10%). The 3-epoch RotNet does not
  # beat a random network whose BatchNorm statistics were re-estimated
  # (66-70% vs 70-73% at seeds 1 and 2); it only beat one with fresh 0/1
  # statistics, whose probe stays at chance (10.4%).
  assert rotnet > 50 and random['final'] > 50, (rotnet, random['final'])
  assert random['random_batch_stats'] == 'reestimated'

  # A second run finds everything finished and trains nothing.
  before = {w: os.path.getmtime(os.path.join(w, 'results.json'))
            for w in workdirs}
  reproduce.reproduce('smoke', root)
  assert before == {w: os.path.getmtime(os.path.join(w, 'results.json'))
                    for w in workdirs}
  assert report_command.main(['report', root]) == 0
  table = capsys.readouterr().out
  assert '| Smoke: RotNet (3 epochs) + linear probe | conv2 | — |' in table


def test_report_table_on_hand_made_results(tmp_path):
  for seed, acc in ((0, 0.88), (1, 0.90)):
    _write_results(tmp_path / f'seed{seed}' / 'table1' / 'nin4',
                   'table1/nin4/multlayer',
                   {'conv1': 0.85, 'conv2': acc})
  _write_results(tmp_path / 'seed0' / 'semi' / 'k20', 'semi/rotnet_conv/k20',
                 {'conv2': 0.5}, complete=False)
  table = report.markdown_table(report.collect(str(tmp_path)))
  lines = table.splitlines()
  assert lines[0].startswith('| experiment | block | paper | ours')
  conv2 = next(l for l in lines if '| conv2 | 89.06* |' in l)
  # Mean and sample std of 88 and 90; difference to the paper's 89.06.
  assert '| 89.00 ± 1.41 | -0.06 |' in conv2
  assert '| 90.00 ± 1.41 (epoch 45) | 2 |' in conv2
  conv1 = next(l for l in lines if '| conv1 |' in l)
  assert '| 85.07* | 85.00 ± 0.00 | -0.07 |' in conv1
  semi = next(l for l in lines if 'K=20' in l)
  assert '| — | 50.00 | — |' in semi and '1 (1 unfinished)' in semi
  _write_results(tmp_path / 'digits', 'table3/rotnet_conv', {'conv2': 0.5},
                 dataset='digits')
  _write_results(tmp_path / 'short', 'table3/rotnet_conv', {'conv2': 0.6},
                 num_epochs=3)
  table = report.markdown_table(report.collect(str(tmp_path)))
  assert '| 91.16* | 50.00 | n/a (digits) |' in table
  # Another schedule is its own row, not compared with the paper.
  assert '| 91.16* | 60.00 | n/a (not the protocol) |' in table
  # Paper tables first, in the paper's order.
  assert lines.index(conv1) < lines.index(conv2) < lines.index(semi)
  # No paper number has been checked against the PDF yet: each is marked.
  assert lines[-1] == report.UNVERIFIED_NOTE


def test_report_marks_only_unverified_paper_numbers(tmp_path, monkeypatch):
  _write_results(tmp_path / 'nin4', 'table1/nin4/multlayer',
                 {'conv1': 0.85, 'conv2': 0.88})
  monkeypatch.setattr(paper, 'VERIFIED',
                      frozenset({('table1/nin4/multlayer', 'conv2')}))
  table = report.markdown_table(report.collect(str(tmp_path)))
  assert '| conv2 | 89.06 | 88.00 |' in table
  assert '| conv1 | 85.07* | 85.00 |' in table
  assert table.endswith(report.UNVERIFIED_NOTE)
  monkeypatch.setattr(paper, 'VERIFIED', frozenset(paper.CIFAR10))
  table = report.markdown_table(report.collect(str(tmp_path)))
  assert '*' not in table and report.UNVERIFIED_NOTE not in table


def test_scaled_schedules_keep_every_rate_and_the_epoch_length():
  config = reproduce.load_config_file('eval_multlayer.py')
  reproduce.scale_schedule(config, 0.05)
  # 20, 40, 45, 50 epochs -> 1, 2, 2.25, 2.5: every rate keeps an epoch.
  assert config.learning_rate_table == ((1, 0.1), (2, 0.02), (3, 0.004),
                                        (4, 0.0008))
  # The official 100 epochs (the last rate holds after epoch 50) -> 5.
  assert config.num_epochs == 5
  config = reproduce.load_config_file('semi_conv.py')
  reproduce.scale_schedule(config, 0.1)
  assert config.learning_rate_table == ((4, 0.1), (7, 0.02), (9, 0.004),
                                        (10, 0.0008))
  assert config.num_epochs == 10 and config.epoch_examples == 50_000


def test_runner_refuses_a_root_with_other_settings(tmp_path):
  job = reproduce.table_jobs('table3')[0]
  config = reproduce.job_config(job, root=str(tmp_path), seed=0)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  assert not reproduce.finished(str(workdir), config)
  with open(workdir / 'config.json', 'w') as f:
    json.dump(dict(json.loads(config.to_json_best_effort()),
                   network={}, log_every_steps=1), f)
  assert not reproduce.finished(str(workdir), config)  # Same job, unfinished.
  (workdir / 'results.json').write_text('{"complete": true}')
  assert reproduce.finished(str(workdir), config)
  other = reproduce.job_config(job, root=str(tmp_path), seed=0,
                               overrides={'model.width': 0.5})
  with pytest.raises(reproduce.InputError, match=r'other settings \(model: '):
    reproduce.finished(str(workdir), other)


def test_jobs_chain_pretext_and_evaluation(tmp_path):
  jobs = {job.name: job for job in reproduce.table_jobs('table1')}
  job = jobs['table1/nin3_multlayer']
  config = reproduce.job_config(job, root=str(tmp_path), seed=2)
  assert config.pretrained == str(tmp_path / 'seed2' / 'pretext' / 'nin3')
  assert config.model.num_blocks == 3 and config.seed == 2
  assert config.experiment == 'table1/nin3/multlayer'
  command = reproduce.command_line(job, config, '/w')
  assert command.startswith('python main.py --config=configs/'
                            'eval_multlayer.py --workdir=/w')
  assert '--config.model.num_blocks=3' in command
  semi = [j for j in reproduce.table_jobs('semi', ks=(20,))]
  assert [j.name for j in semi] == ['pretext/nin4', 'semi/rotnet_conv_k20',
                                    'semi/supervised_nin3_k20']
  with pytest.raises(reproduce.InputError, match='unknown table'):
    reproduce.table_jobs('table9')


def test_every_job_config_is_valid(tmp_path):
  from rotnet_jax import config_schema  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / 'images')  # --quick's ImageNet folder.
  for table in reproduce.TABLES:
    for job in reproduce.table_jobs(table):
      for overrides in ({}, reproduce.quick_overrides(table, folder)):
        config = reproduce.job_config(job, root=str(tmp_path), seed=0,
                                      scale=reproduce.QUICK_SCALE,
                                      overrides=overrides)
        config_schema.validate(config)


def test_imagenet_tables_share_one_pretext_run(tmp_path, capsys):
  root = str(tmp_path)
  table4 = reproduce.reproduce('table4', root, dry_run=True)
  table5 = reproduce.reproduce('table5', root, dry_run=True)
  pretext = os.path.join(root, 'seed0', 'pretext', 'imagenet_alexnet')
  assert table4 == [pretext] + [
      os.path.join(root, 'seed0', 'table4', name)
      for name in ('linear', 'nonlinear_conv4', 'nonlinear_conv5')]
  assert table5 == [pretext, os.path.join(root, 'seed0', 'table5',
                                          'places_linear')]
  assert os.listdir(root) == []  # A dry run writes nothing.
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6 and lines[0] == lines[4]  # The same pretext job.
  assert lines[0] == (
      'python main.py --config=configs/imagenet_rotnet_alexnet.py '
      f'--workdir={pretext} --config.experiment=pretext/imagenet_alexnet')
  for line, config_file in zip(lines[1:4] + lines[5:], (
      'imagenet_linear_probes', 'imagenet_nonlinear_conv4',
      'imagenet_nonlinear_conv5', 'places_linear_probes')):
    assert line.startswith(f'python main.py --config=configs/{config_file}'
                           '.py --workdir='), line
    assert line.endswith(f' --config.pretrained={pretext}'), line
  # Both non-linear heads are rows of one experiment; every evaluation's
  # experiment has the paper's numbers.
  jobs = reproduce.table_jobs('table4') + reproduce.table_jobs('table5')
  experiments = [j.experiment for j in jobs if j.pretrained]
  assert experiments == [
      'table4/rotnet_alexnet/linear', 'table4/rotnet_alexnet/nonlinear',
      'table4/rotnet_alexnet/nonlinear',
      'table5/rotnet_alexnet/places_linear']
  for experiment in experiments:
    assert paper.protocol_epochs(experiment) in (35, 40)
    assert any(key[0] == experiment for key in paper.PAPER)
    assert experiment in paper.DESCRIPTIONS
  # The protocol epochs are the configs' own.
  for job in jobs:
    if job.pretrained:
      config = reproduce.load_config_file(job.config_file)
      assert config.num_epochs == paper.protocol_epochs(job.experiment)


def test_quick_alexnet_tables_need_an_image_folder(tmp_path):
  for table in reproduce.ALEXNET_TABLES:
    for dataset in (None, 'digits'):
      with pytest.raises(reproduce.InputError, match='--dataset=<image '):
        reproduce.quick_overrides(table, dataset)
  overrides = reproduce.quick_overrides('table4', '/data/in')
  assert overrides == dict(reproduce.QUICK_OVERRIDES, dataset='/data/in',
                           image_size=64, batch_size=16)
  # The CIFAR tables' quick run is unchanged: the digits by default.
  assert reproduce.quick_overrides('table3', None) == dict(
      reproduce.QUICK_OVERRIDES, dataset='digits')
  job = reproduce.table_jobs('table4')[0]
  config = reproduce.job_config(job, root=str(tmp_path), seed=0,
                                scale=reproduce.QUICK_SCALE,
                                overrides=overrides)
  # 50 epochs x 0.03, each of the four learning rates keeping one epoch.
  assert config.num_epochs == 4 and config.image_size == 64
  assert config.model.width == 1 / 16


def test_places_probes_take_their_own_dataset(tmp_path):
  pretext, places = reproduce.table_jobs('table5')
  overrides = {'dataset': '/data/imagenet', 'model.width': 0.5}

  def dataset(job, **kwargs):
    config = reproduce.job_config(job, root=str(tmp_path), seed=0,
                                  overrides=overrides, **kwargs)
    assert config.model.width == 0.5  # Other overrides apply to all.
    return config.dataset

  assert dataset(pretext) == '/data/imagenet'
  assert dataset(places) == 'places365_small'  # The config's.
  assert dataset(places, places_dataset='/data/places205') == (
      '/data/places205')
  assert dataset(pretext, places_dataset='/data/places205') == (
      '/data/imagenet')


def test_image_folders_test_on_their_own_split(tmp_path):
  job = reproduce.table_jobs('table4')[1]

  def test_split(*folders):
    root = tmp_path / '_'.join(folders)
    for folder in folders:
      (root / folder).mkdir(parents=True)
    return reproduce.job_config(
        job, root=str(tmp_path), seed=0,
        overrides={'dataset': str(root)}).test_split

  assert test_split('train', 'val') == 'val'
  assert test_split('train', 'test') == 'test'
  assert test_split('train', 'validation', 'val') == 'validation'
  # Two candidates: none is guessed; opening the data names the missing one.
  assert test_split('train', 'val', 'test') == 'validation'
  config = reproduce.job_config(job, root=str(tmp_path), seed=0)
  assert config.test_split == 'validation'  # TFDS imagenet2012.


def test_report_compares_imagenet_rows_run_by_the_protocol(tmp_path):
  linear = {b: 0.3 for b in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')}
  _write_results(tmp_path / 'linear', 'table4/rotnet_alexnet/linear', linear,
                 dataset='imagenet2012', num_epochs=35)
  _write_results(tmp_path / 'conv4', 'table4/rotnet_alexnet/nonlinear',
                 {'conv4': 0.4}, dataset='imagenet2012', num_epochs=40)
  _write_results(tmp_path / 'conv5', 'table4/rotnet_alexnet/nonlinear',
                 {'conv5': 0.4}, dataset='imagenet2012', num_epochs=40)
  _write_results(tmp_path / 'places', 'table5/rotnet_alexnet/places_linear',
                 linear, dataset='places365_small', num_epochs=35)
  _write_results(tmp_path / 'places205',
                 'table5/rotnet_alexnet/places_linear', {'conv1': 0.2},
                 dataset='/data/places205', num_epochs=35)
  _write_results(tmp_path / 'short', 'table4/rotnet_alexnet/linear',
                 {'conv1': 0.1}, dataset='imagenet2012', num_epochs=4)
  table = report.markdown_table(report.collect(str(tmp_path)))
  lines = table.splitlines()

  def row(start):
    (line,) = [l for l in lines if l.startswith(start)]
    return line

  linear_name = '| ImageNet: RotNet AlexNet + linear |'
  assert '| conv1 | 18.80* | 30.00 | +11.20 |' in row(
      f'{linear_name} conv1 | 18.80* | 30.00 ')
  assert '| 36.50* | 30.00 | -6.50 |' in row(f'{linear_name} conv5 |')
  assert '| 18.80* | 10.00 | n/a (not the protocol) |' in row(
      f'{linear_name} conv1 | 18.80* | 10.00 ')
  nonlinear = '| ImageNet: RotNet AlexNet + non-linear |'
  assert '| 43.80* | 40.00 | -3.80 |' in row(f'{nonlinear} conv4 |')
  assert '| — | 40.00 | — |' in row(f'{nonlinear} conv5 |')
  places = '| Places: RotNet AlexNet (ImageNet) + linear |'
  # TFDS places365_small is not the paper's Places205; a folder may be.
  assert '| 21.50* | 30.00 | n/a (places365_small) |' in row(
      f'{places} conv1 | 21.50* | 30.00 ')
  assert '| 21.50* | 20.00 | -1.50 |' in row(
      f'{places} conv1 | 21.50* | 20.00 ')
  # ImageNet rows after CIFAR-10's in the paper's order, linear first.
  assert lines.index(row(f'{linear_name} conv5 |')) < lines.index(
      row(f'{nonlinear} conv4 |')) < lines.index(row(f'{places} conv2 |'))
  assert lines[-1] == report.UNVERIFIED_NOTE



@pytest.mark.parametrize('args,names', [
    (['table4', '--quick'], ('table4 --quick needs --dataset=<image folder>',
                             'too small for AlexNet')),
    (['table5', '--quick', '--dataset=digits'], ('table5 --quick needs',)),
    (['table4', '--places_dataset=/data/places205'],
     ('--places_dataset', 'table4 has no Places jobs')),
], ids=['no-folder', 'digits', 'places-in-table4'])
def test_imagenet_table_command_line_errors(args, names, tmp_path):
  root = tmp_path / 'root'
  result = subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.reproduce', *args, f'--root={root}'],
      cwd=REPO_ROOT, check=False, capture_output=True, text=True)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and all(n in errors[0] for n in names), (
      result.stderr[-2000:])
  assert not root.exists()
