"""The reproduction runner and the report, end to end on the bundled data."""

import dataclasses
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


# Three runs (a 3-epoch pretext and two probes): the slow tier (the default
# run checks the runner's jobs, dry runs and the report).
@pytest.mark.slow
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
  conv2 = next(l for l in lines if '| conv2 | 89.06 |' in l)
  # Mean and sample std of 88 and 90; difference to the paper's 89.06.
  assert '| 89.00 ± 1.41 | -0.06 |' in conv2
  assert '| 90.00 ± 1.41 (epoch 45) | 2 |' in conv2
  conv1 = next(l for l in lines
               if l.startswith('| RotNet NIN-4 + non-linear | conv1 |'))
  assert '| 85.07 | 85.00 ± 0.00 | -0.07 |' in conv1
  semi = next(l for l in lines if 'K=20' in l)
  assert '| — | 50.00 | — |' in semi and '1 (1 unfinished)' in semi
  # Table 1 has a result: its other rows with a paper number are listed
  # as not run yet (NIN-3's 3 blocks, NIN-4's conv3 and conv4, NIN-5's
  # 5), in the paper's order; Table 2, not started, is not.
  not_run = [l for l in lines if report.NOT_RUN in l]
  assert not_run == [
      f'| RotNet NIN-{n} + non-linear | conv{b} | {v:.2f} | not run yet | '
      '— | — | 0 | — | — | — |'
      for n, first, values in ((3, 1, (85.45, 88.26, 62.09)),
                               (4, 3, (86.21, 61.73)),
                               (5, 1, (85.04, 89.76, 86.82, 74.50, 50.37)))
      for b, v in enumerate(values, first)]
  assert (lines.index(not_run[2]) < lines.index(conv1) <
          lines.index(conv2) < lines.index(not_run[3]))
  _write_results(tmp_path / 'digits', 'table3/rotnet_conv', {'conv2': 0.5},
                 dataset='digits')
  _write_results(tmp_path / 'short', 'table3/rotnet_conv', {'conv2': 0.6},
                 num_epochs=3)
  table = report.markdown_table(report.collect(str(tmp_path)))
  assert '| 91.16 | 50.00 | n/a (digits) |' in table
  # Another schedule is its own row, not compared with the paper.
  assert '| 91.16 | 60.00 | n/a (not the protocol) |' in table
  # Paper tables first, in the paper's order.
  assert lines.index(conv1) < lines.index(conv2) < lines.index(semi)
  # Every CIFAR-10 number has a source: none is starred, no footnote.
  assert '*' not in table and report.UNCONFIRMED_NOTE not in table


def test_report_stars_only_numbers_no_source_confirms(tmp_path, monkeypatch):
  _write_results(tmp_path / 'nin4', 'table1/nin4/multlayer',
                 {'conv1': 0.85, 'conv2': 0.88})
  _write_results(tmp_path / 'places', 'table6/rotnet_alexnet/places_linear',
                 {'conv1': 0.2}, dataset='/data/places205', num_epochs=35)
  table = report.markdown_table(report.collect(str(tmp_path)))
  assert '| conv2 | 89.06 | 88.00 |' in table
  assert '| conv1 | 85.07 | 85.00 |' in table
  # Places (Table 6): no source shows it, so it is starred.
  assert '| conv1 | 21.50* | 20.00 | -1.50 |' in table
  assert table.endswith('\n\n' + report.UNCONFIRMED_NOTE)
  assert not paper.sources('table6/rotnet_alexnet/places_linear', 'conv1')
  # A table whose sources are taken away is starred too: the star follows
  # the sources, nothing else.
  monkeypatch.setattr(paper, 'TABLES', tuple(
      t if t.number != 1 else dataclasses.replace(
          t, sources=(), rows=tuple(dataclasses.replace(r, sources=())
                                    for r in t.rows))
      for t in paper.TABLES))
  table = report.markdown_table(report.collect(str(tmp_path)))
  assert '| conv2 | 89.06* | 88.00 |' in table


def test_paper_numbers_and_their_sources():
  nonlinear = 'table4/rotnet_alexnet/nonlinear'
  assert paper.paper_accuracy(nonlinear, 'conv4') == 50.0
  assert paper.paper_accuracy(nonlinear, 'conv5') == 43.8
  assert any('issues/10' in s for s in paper.sources(nonlinear, 'conv4'))
  assert [paper.paper_accuracy('table5/rotnet_alexnet/linear', f'conv{b}')
          for b in range(1, 6)] == [18.8, 31.7, 38.7, 38.2, 36.5]
  assert [paper.paper_accuracy('table1/nin3/multlayer', f'conv{b}')
          for b in range(1, 4)] == [85.45, 88.26, 62.09]
  assert [paper.paper_accuracy('table1/nin5/multlayer', f'conv{b}')
          for b in range(1, 6)] == [85.04, 89.76, 86.82, 74.50, 50.37]
  assert paper.paper_accuracy('table3/rotnet_multlayer_finetune',
                              'conv2') == 91.73
  # Every number of ours has a source, but Places's (Table 6).
  unconfirmed = {key for key, value in paper.PAPER.items()
                 if value is not None and not paper.confirmed(*key)}
  assert unconfirmed == {('table6/rotnet_alexnet/places_linear', f'conv{b}')
                         for b in range(1, 6)}
  # Rows the paper has and we do not run are kept for reference.
  table3 = paper.TABLES_BY_NAME['table3']
  assert {r.method: r.values for r in table3.rows if not r.experiment} == {
      'Roto-Scat + SVM': (82.3,), 'ExemplarCNN': (84.3,), 'DCGAN': (82.8,),
      'Scattering': (84.7,)}
  voc = {r.method: r.values for r in paper.TABLES_BY_NAME['table7'].rows}
  assert voc['RotNet'] == (70.87, 72.97, 54.4, 39.1)
  assert voc['Random'] == (None, 53.3, 43.4, 19.8)
  # Old names are today's rows.
  assert paper.paper_accuracy('table4/rotnet_alexnet/linear', 'conv1') == 18.8
  assert paper.describe('table5/rotnet_alexnet/places_linear') == (
      paper.describe('table6/rotnet_alexnet/places_linear'))


def test_paper_tables_show_every_row_with_its_sources():
  text = report.paper_tables()
  lines = text.splitlines()
  for number in range(1, 8):
    assert any(l.startswith(f'Table {number}: ') for l in lines), number
  assert '| Roto-Scat + SVM | 82.3 | — |' in lines
  assert '| Supervised NIN | 92.80 | Supervised NIN-3 ' in text
  assert '| ImageNet labels | 59.7 | 59.7 | — |' in lines
  assert '| Random | 27.1 | 12.0 | — |' in lines
  assert '| RotNet | 50.0 | 43.8 | ImageNet: RotNet AlexNet' in text
  assert '| Random rescaled | 17.5 | 23.0 | 24.5 | 23.2 | 20.6 | — |' in lines
  # Table 7's RotNet row is four runs of ours, one per column.
  (rotnet,) = [l for l in lines if l.startswith('| RotNet | 70.87 |')]
  assert rotnet.startswith('| RotNet | 70.87 | 72.97 | 54.4 | 39.1 | ')
  assert [part.split('`')[0] for part in rotnet.split('(`')[1:]] == [
      'table7/rotnet_alexnet/classification_fc6_8',
      'table7/rotnet_alexnet/classification_all',
      'table7/rotnet_alexnet/detection',
      'table7/rotnet_alexnet/segmentation']
  assert '| Random rescaled | 39.2 | 56.6 | 45.6 | 32.6 | — |' in lines
  assert '| RotNet | 21.5* | 31.0* | 35.1* | 34.6* | 33.7* |' in text
  assert lines.count('Sources: none (see the footnote).') == 1
  assert any('py-tonic.github.io' in l and 'image 5' in l for l in lines)
  assert lines[-1] == report.UNCONFIRMED_NOTE
  assert report.UNCONFIRMED_NOTE not in report.paper_tables(['table4'])
  with pytest.raises(report.InputError, match='unknown paper table'):
    report.paper_tables(['table8'])


def test_the_report_command_prints_the_papers_tables(capsys):
  assert report_command.main(['report', '--paper', 'table4']) == 0
  out = capsys.readouterr().out
  assert out.startswith('Table 4: ') and 'Table 5: ' not in out
  assert '| RotNet | 50.0 | 43.8 |' in out
  assert report_command.main(['report', '--paper', 'table8']) == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith('error: unknown paper table')


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
  # A run of an older version lacks the keys added since: at their
  # defaults they ask for what it did.
  older = dict(json.loads(config.to_json_best_effort()), network={})
  del older['nms_threshold'], older['train_scales']
  with open(workdir / 'config.json', 'w') as f:
    json.dump(older, f)
  assert reproduce.finished(str(workdir), config)
  changed = reproduce.job_config(job, root=str(tmp_path), seed=0,
                                 overrides={'nms_threshold': 0.4})
  with pytest.raises(reproduce.InputError, match='nms_threshold: None there'):
    reproduce.finished(str(workdir), changed)
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


def test_alexnet_tables_are_the_papers_and_share_one_pretext_run(tmp_path,
                                                                  capsys):
  root = str(tmp_path)
  pretext = os.path.join(root, 'seed0', 'pretext', 'imagenet_alexnet')

  def dry_run(table):
    return [os.path.relpath(w, root)
            for w in reproduce.reproduce(table, root, dry_run=True)]

  assert dry_run('table4') == ['seed0/pretext/imagenet_alexnet',
                               'seed0/table4/nonlinear_conv4',
                               'seed0/table4/nonlinear_conv5']
  assert dry_run('table5') == ['seed0/pretext/imagenet_alexnet',
                               'seed0/table5/linear']
  assert dry_run('table6') == ['seed0/pretext/imagenet_alexnet',
                               'seed0/table6/places_linear']
  assert dry_run('imagenet') == ['seed0/pretext/imagenet_alexnet',
                                 'seed0/table4/nonlinear_conv4',
                                 'seed0/table4/nonlinear_conv5',
                                 'seed0/table5/linear']
  assert os.listdir(root) == []  # A dry run writes nothing.
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 11 and lines[0] == lines[3] == lines[5] == lines[7]
  assert lines[0] == (
      'python main.py --config=configs/imagenet_rotnet_alexnet.py '
      f'--workdir={pretext} --config.experiment=pretext/imagenet_alexnet')
  for line, config_file in zip(lines[1:3] + lines[4:5] + lines[6:7], (
      'imagenet_nonlinear_conv4', 'imagenet_nonlinear_conv5',
      'imagenet_linear_probes', 'places_linear_probes')):
    assert line.startswith(f'python main.py --config=configs/{config_file}'
                           '.py --workdir='), line
    assert line.endswith(f' --config.pretrained={pretext}'), line
  # Both non-linear heads are rows of one experiment; every evaluation's
  # experiment has the paper's numbers, of its own table.
  jobs = [job for table in ('table4', 'table5', 'table6')
          for job in reproduce.table_jobs(table)]
  experiments = [j.experiment for j in jobs if j.pretrained]
  assert experiments == [
      'table4/rotnet_alexnet/nonlinear', 'table4/rotnet_alexnet/nonlinear',
      'table5/rotnet_alexnet/linear', 'table6/rotnet_alexnet/places_linear']
  for experiment in experiments:
    assert paper.protocol_epochs(experiment) in (35, 40)
    assert any(key[0] == experiment for key in paper.PAPER)
    assert experiment in paper.DESCRIPTIONS
  # The protocol epochs are the configs' own; the classifiers train on the
  # official resize and random crop, the pretext run on random-sized crops.
  for job in jobs:
    config = reproduce.load_config_file(job.config_file)
    if job.pretrained:
      assert config.num_epochs == paper.protocol_epochs(job.experiment)
      assert config.augmentation == 'resize_crop', job.config_file
    else:
      assert config.augmentation == 'imagenet'


def _old_root(tmp_path, *old_workdirs):
  """A root of the old AlexNet table numbering: its old workdirs made."""
  root = tmp_path / 'old'
  for name in old_workdirs:
    (root / 'seed0' / name).mkdir(parents=True)
  return str(root)


def test_old_table_names_keep_working(tmp_path, monkeypatch, caplog):
  # In a root the old table4 ran in, table4 still runs what it ran there
  # (both ImageNet tables) in its old workdirs, and a finished job of it
  # is found and skipped; table5 there is still Places.
  root = _old_root(tmp_path, 'table4/linear')
  assert reproduce.old_numbering(root)
  linear = {j.name: j for j in reproduce.table_jobs('table4', root=root)}[
      'table4/linear']
  assert linear.experiment == 'table4/rotnet_alexnet/linear'
  # As the runner checks it before it compares it with the workdir's.
  config = reproduce.validation.check_config(
      reproduce.job_config(linear, root=root, seed=0))
  workdir = os.path.join(root, 'seed0', 'table4', 'linear')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(dict(json.loads(config.to_json_best_effort()), network={}), f)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'complete': True}, f)
  trained = []
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate',
                      lambda config, workdir: trained.append(
                          (os.path.relpath(workdir, root), config.experiment)))
  with caplog.at_level('WARNING'):
    workdirs = reproduce.reproduce('table4', root)
  assert [os.path.relpath(w, root) for w in workdirs] == [
      'seed0/pretext/imagenet_alexnet', 'seed0/table4/nonlinear_conv4',
      'seed0/table4/nonlinear_conv5', 'seed0/table4/linear']
  assert trained == [
      ('seed0/pretext/imagenet_alexnet', 'pretext/imagenet_alexnet'),
      ('seed0/table4/nonlinear_conv4', 'table4/rotnet_alexnet/nonlinear'),
      ('seed0/table4/nonlinear_conv5', 'table4/rotnet_alexnet/nonlinear')]
  (message,) = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith('table4:')]
  assert 'holds runs of the old numbering' in message
  assert all(name in message for name in ('table5', 'table6', 'imagenet'))
  # Old table5 there: the Places probes, in their old workdir; so is the
  # new name of that table.
  for table in ('table5', 'table6'):
    assert [os.path.relpath(w, root) for w in reproduce.reproduce(
        table, root, dry_run=True)] == ['seed0/pretext/imagenet_alexnet',
                                        'seed0/table5/places_linear']
  (places,) = [j for j in reproduce.table_jobs('table5', root=root)
               if j.places]
  assert places.experiment == 'table5/rotnet_alexnet/places_linear'
  # The old Places workdir alone marks an old root too.
  assert reproduce.old_numbering(_old_root(tmp_path / 'p',
                                           'table5/places_linear'))
  # Elsewhere the names are the paper's, and the runner says what changed.
  fresh = str(tmp_path / 'fresh')
  assert not reproduce.old_numbering(fresh)
  assert [j.name for j in reproduce.table_jobs('table5', root=fresh)] == [
      'pretext/imagenet_alexnet', 'table5/linear']
  note = reproduce.note('table5', fresh)
  assert note.startswith("table5 is the paper's Table 5")
  assert 'Places' in note and "today's table6" in note
  assert reproduce.note('table6', fresh) is None


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
  pretext, places = reproduce.table_jobs('table6')
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
  _write_results(tmp_path / 'linear', 'table5/rotnet_alexnet/linear', linear,
                 dataset='imagenet2012', num_epochs=35)
  # A run of the old numbering: found under today's row, averaged with it.
  _write_results(tmp_path / 'old_linear', 'table4/rotnet_alexnet/linear',
                 {b: 0.4 for b in linear}, dataset='imagenet2012',
                 num_epochs=35)
  _write_results(tmp_path / 'conv4', 'table4/rotnet_alexnet/nonlinear',
                 {'conv4': 0.4}, dataset='imagenet2012', num_epochs=40)
  _write_results(tmp_path / 'conv5', 'table4/rotnet_alexnet/nonlinear',
                 {'conv5': 0.4}, dataset='imagenet2012', num_epochs=40)
  _write_results(tmp_path / 'places', 'table6/rotnet_alexnet/places_linear',
                 linear, dataset='places365_small', num_epochs=35)
  _write_results(tmp_path / 'places205',
                 'table5/rotnet_alexnet/places_linear', {'conv1': 0.2},
                 dataset='/data/places205', num_epochs=35)
  _write_results(tmp_path / 'short', 'table5/rotnet_alexnet/linear',
                 {'conv1': 0.1}, dataset='imagenet2012', num_epochs=4)
  table = report.markdown_table(report.collect(str(tmp_path)))
  lines = table.splitlines()

  def row(start):
    (line,) = [l for l in lines if l.startswith(start)]
    return line

  linear_name = '| ImageNet: RotNet AlexNet + linear |'
  conv1 = row(f'{linear_name} conv1 | 18.80 | 35.00 ')
  assert '| 18.80 | 35.00 ± 7.07 | +16.20 |' in conv1 and '| 2 |' in conv1
  assert '| 36.50 | 35.00 ± 7.07 | -1.50 |' in row(f'{linear_name} conv5 |')
  assert '| 18.80 | 10.00 | n/a (not the protocol) |' in row(
      f'{linear_name} conv1 | 18.80 | 10.00 ')
  nonlinear = '| ImageNet: RotNet AlexNet + non-linear |'
  # Table 4: conv4 50.0 and conv5 43.8, both confirmed (no star).
  assert '| conv4 | 50.00 | 40.00 | -10.00 |' in row(f'{nonlinear} conv4 |')
  assert '| conv5 | 43.80 | 40.00 | -3.80 |' in row(f'{nonlinear} conv5 |')
  places = '| Places: RotNet AlexNet (ImageNet) + linear |'
  # TFDS places365_small is not the paper's Places205; a folder may be.
  # No source confirms the Places numbers: starred.
  assert '| 21.50* | 30.00 | n/a (places365_small) |' in row(
      f'{places} conv1 | 21.50* | 30.00 ')
  assert '| 21.50* | 20.00 | -1.50 |' in row(
      f'{places} conv1 | 21.50* | 20.00 ')
  # ImageNet rows in the paper's order: Table 4, 5, then Places (6).
  assert lines.index(row(f'{nonlinear} conv5 |')) < lines.index(
      row(f'{linear_name} conv5 |')) < lines.index(row(f'{places} conv2 |'))
  assert lines[-1] == report.UNCONFIRMED_NOTE
  assert sum('*' in l for l in lines[2:-2]) == 6  # The Places rows only.


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
