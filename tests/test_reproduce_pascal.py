"""The PASCAL VOC table (the paper's Table 7): its jobs (detection's
proposals first), their quick and scaled schedules, its dry run, its rows
in the report, and one quick run end to end on a generated image folder
and VOCdevkit."""

import json
import os
import shlex
import subprocess
import sys

import pytest

import helpers
import voc_folder
from imagenet_folder import write_imagenet_folder
from rotnet_jax import config_schema
from rotnet_jax.commands import report as report_command
from rotnet_jax.data import voc
from rotnet_jax.experiments import paper
from rotnet_jax.experiments import report
from rotnet_jax.experiments import reproduce

PRETEXT = 'pretext/imagenet_alexnet'
# Workdir -> (config file, experiment, pretrained, the paper's number).
VOC_JOBS = {
    'table7/voc07_classification_fc6_8': (
        'voc07_classification_fc6_8.py',
        'table7/rotnet_alexnet/classification_fc6_8', PRETEXT, 70.87),
    'table7/voc07_classification_all': (
        'voc07_classification_all.py',
        'table7/rotnet_alexnet/classification_all', PRETEXT, 72.97),
    'table7/voc12_segmentation': (
        'voc12_segmentation.py', 'table7/rotnet_alexnet/segmentation',
        PRETEXT, 39.1),
    'table7/voc07_detection': (
        'voc07_detection.py', 'table7/rotnet_alexnet/detection', PRETEXT,
        54.4),
    'table7/random_voc07_classification_all': (
        'voc07_classification_all.py',
        'table7/random_alexnet/classification_all', 'random', 53.3),
    'table7/random_voc12_segmentation': (
        'voc12_segmentation.py', 'table7/random_alexnet/segmentation',
        'random', 19.8),
}
CLASSIFICATION = 'table7/voc07_classification_fc6_8'
SEGMENTATION = 'table7/voc12_segmentation'
DETECTION = 'table7/voc07_detection'
# The proposals jobs (not training runs), in order: detection trains on
# trainval and tests on test.
PROPOSALS = ('proposals/voc07_trainval', 'proposals/voc07_test')
# Every job of the table in order: the proposals just before detection.
JOB_ORDER = [PRETEXT, 'table7/voc07_classification_fc6_8',
             'table7/voc07_classification_all', SEGMENTATION, *PROPOSALS,
             DETECTION, 'table7/random_voc07_classification_all',
             'table7/random_voc12_segmentation']
# The training jobs, as the runner returns their workdirs.
TRAINING_ORDER = [name for name in JOB_ORDER if name not in PROPOSALS]


def _jobs(table='pascal'):
  return {job.name: job for job in reproduce.table_jobs(table)}


def _empty_devkit(folder):
  """A folder that names itself a VOCdevkit (what a dry run checks)."""
  for year in ('VOC2007', 'VOC2012'):
    os.makedirs(os.path.join(folder, year))
  return str(folder)


def test_pascal_jobs_fine_tune_the_shared_alexnet_on_each_task(tmp_path):
  jobs = _jobs()
  assert list(jobs) == JOB_ORDER
  assert sorted(TRAINING_ORDER) == sorted([PRETEXT, *VOC_JOBS])
  # The pretext job of the ImageNet tables: one root trains it once.
  assert jobs[PRETEXT] == _jobs('table4')[PRETEXT]
  assert _jobs('table7') == jobs  # The paper's number names it too.
  root = str(tmp_path)
  pretext_workdir = os.path.join(root, 'seed0', PRETEXT)
  for name, (config_file, experiment, pretrained, number) in (
      VOC_JOBS.items()):
    job = jobs[name]
    assert (job.config_file, job.experiment, job.voc) == (
        config_file, experiment, True)
    config = reproduce.job_config(job, root=root, seed=0)
    if pretrained == 'random':
      assert (config.pretrained, config.model.name) == ('random', 'alexnet')
    else:
      assert config.pretrained == pretext_workdir
    assert config.frozen_up_to == ('conv5' if 'fc6_8' in name else '')
    # Each job is a row of the paper's Table 7, compared when it ran the
    # config's own epochs.
    assert paper.paper_accuracy(experiment, config.transfer_task) == number
    assert paper.protocol_epochs(experiment) == config.num_epochs
    assert paper.confirmed(experiment, config.transfer_task)
    assert experiment in paper.DESCRIPTIONS
  # The proposals jobs compute the splits the detection config reads,
  # from its dataset; they train nothing.
  detection = reproduce.job_config(jobs[DETECTION], root=root, seed=0)
  assert (detection.transfer_task, detection.proposals) == (
      'voc_detection', '')
  assert [jobs[name].proposals_split for name in PROPOSALS] == [
      detection.train_split, detection.test_split]
  for name in PROPOSALS:
    job = jobs[name]
    assert (job.config_file, job.voc, job.pretrained) == (
        'voc07_detection.py', True, PRETEXT)
  assert not any(jobs[name].proposals_split for name in TRAINING_ORDER)
  # Detection's paper row: RotNet 54.4, compared on a VOCdevkit folder
  # only (it reads the devkit's XML); ImageNet labels' 56.8 beside it.
  experiment = 'table7/rotnet_alexnet/detection'
  assert paper.comparable('/data/VOCdevkit', experiment)
  assert not paper.comparable('voc/2007', experiment)
  voc = {row.method: row.values
         for row in paper.TABLES_BY_NAME['table7'].rows}
  assert [voc[m][2] for m in ('ImageNet labels', 'Random',
                              'Random rescaled', 'RotNet')] == [
                                  56.8, 43.4, 45.6, 54.4]
  # The random AlexNet's detection is a reference number, not ours.
  assert paper.paper_accuracy('table7/random_alexnet/detection',
                              'voc_detection') is None


def test_voc_dataset_sets_the_voc_jobs_and_dataset_the_pretext(tmp_path):
  jobs = _jobs()
  overrides = {'dataset': '/data/imagenet', 'num_train_examples': 2000,
               'model.width': 0.5}

  def config(name, **kwargs):
    result = reproduce.job_config(jobs[name], root=str(tmp_path), seed=0,
                                  overrides=overrides, **kwargs)
    assert result.model.width == 0.5  # Other overrides apply to all.
    return result

  pretext = config(PRETEXT, voc_dataset='/data/VOCdevkit')
  assert (pretext.dataset, pretext.num_train_examples) == (
      '/data/imagenet', 2000)
  # Without --voc_dataset: the configs' own (TFDS voc/2007; segmentation
  # only from a folder); VOC has no training subset.
  assert config(CLASSIFICATION).dataset == 'voc/2007'
  assert config(SEGMENTATION).dataset == './VOCdevkit'
  assert config(DETECTION).dataset == './VOCdevkit'
  for name in [*VOC_JOBS, *PROPOSALS]:
    voc_config = config(name, voc_dataset='/data/VOCdevkit')
    assert voc_config.dataset == '/data/VOCdevkit'
    assert voc_config.num_train_examples == 0


def test_quick_and_scaled_schedules_of_both_kinds(tmp_path):
  jobs = _jobs()
  overrides = reproduce.quick_overrides('pascal', '/data/in')
  assert overrides == reproduce.quick_overrides('table7', '/data/in') == (
      dict(reproduce.QUICK_OVERRIDES, dataset='/data/in', image_size=64,
           batch_size=16))

  def config(name, scale, quick=True):
    result = reproduce.job_config(
        jobs[name], root=str(tmp_path), seed=0, scale=scale,
        overrides=overrides if quick else {}, voc_dataset='/data/voc',
        quick=quick)
    config_schema.validate(result)
    return result

  pretext = config(PRETEXT, reproduce.QUICK_SCALE)
  assert (pretext.num_epochs, pretext.batch_size, pretext.image_size) == (
      4, 16, 64)
  # Classification's schedule is in iterations: 256 epochs x 0.03 -> 8,
  # its step table's ends 10,000..80,000 x 0.03 -> 300..2,400 (the rates
  # as they were); the epoch table it replaces stays the config's.
  classification = config(CLASSIFICATION, reproduce.QUICK_SCALE)
  assert classification.num_epochs == 8
  assert classification.learning_rate_steps_table == tuple(
      (300 * k, 0.001 * 0.5 ** (k - 1)) for k in range(1, 9))
  assert classification.learning_rate_table == (
      reproduce.load_config_file('voc07_classification_fc6_8.py')
      .learning_rate_table)
  assert (classification.batch_size, classification.transfer_image_size,
          classification.test_crops, classification.image_size,
          classification.model.width) == (8, 64, 2, 64, 1 / 16)
  assert (classification.eval_every_epochs,
          classification.checkpoint_every_epochs) == (1, 1)
  # Segmentation's is in epochs: 60, 100 x 0.03 -> 1.8, 3 -> 2, 3.
  segmentation = config(SEGMENTATION, reproduce.QUICK_SCALE)
  assert (segmentation.num_epochs, segmentation.learning_rate_table) == (
      3, ((2, 0.001), (3, 0.0001)))
  assert segmentation.learning_rate_steps_table == ()
  assert (segmentation.batch_size, segmentation.transfer_image_size) == (
      4, 80)
  # Detection's is in iterations too: 16 epochs x 0.03 -> 1 (at least),
  # its steps 30,000 and 40,080 x 0.03 -> 900 and 1,202; small images.
  detection = config(DETECTION, reproduce.QUICK_SCALE)
  assert (detection.num_epochs, detection.learning_rate_steps_table) == (
      1, ((900, 0.001), (1202, 0.0001)))
  assert (detection.batch_size, detection.train_scales, detection.test_scale,
          detection.max_size, detection.max_proposals,
          detection.rois_per_image) == (2, (64, 80), 64, 128, 200, 16)
  # --epochs_scale alone (not --quick): the protocol's batches and crops,
  # both kinds of table scaled.
  half = config(CLASSIFICATION, 0.5, quick=False)
  assert half.num_epochs == 128 and half.batch_size == 16
  assert half.transfer_image_size == 0 and half.test_crops == 10
  assert [end for end, _ in half.learning_rate_steps_table] == list(
      range(5_000, 40_001, 5_000))
  half = config(SEGMENTATION, 0.5, quick=False)
  assert (half.num_epochs, half.learning_rate_table) == (
      50, ((30, 0.001), (50, 0.0001)))
  # Scaled to nothing, every rate keeps one step, and the run one epoch.
  tiny = config(CLASSIFICATION, 1e-4, quick=False)
  assert [end for end, _ in tiny.learning_rate_steps_table] == list(
      range(1, 9))
  assert tiny.num_epochs == 1


def test_pascal_dry_run_prints_every_job(tmp_path, capsys, monkeypatch):
  root = str(tmp_path / 'root')
  devkit = _empty_devkit(tmp_path / 'VOCdevkit')
  capsys.readouterr()
  reproduce.reproduce('table4', root, dry_run=True)
  table4_pretext_line = capsys.readouterr().out.splitlines()[0]
  workdirs = reproduce.reproduce('pascal', root, dry_run=True,
                                 voc_dataset=devkit, seeds=(0, 1))
  assert [os.path.relpath(w, root) for w in workdirs] == [
      f'seed{seed}/{name}' for seed in (0, 1) for name in TRAINING_ORDER]
  lines = capsys.readouterr().out.splitlines()
  # Every job's line in the table's order; the proposals once for both
  # seeds, just before seed 0's detection run.
  assert len(lines) == 2 * len(TRAINING_ORDER) + 2
  assert lines[0] == table4_pretext_line
  proposals_at = JOB_ORDER.index(PROPOSALS[0])
  assert lines[proposals_at:proposals_at + 2] == [
      f'rotnet-proposals --dataset={devkit} --split={split}'
      for split in ('trainval', 'test')]
  assert lines[proposals_at + 2].startswith(
      'python main.py --config=configs/voc07_detection.py ')
  assert not any('rotnet-proposals' in line
                 for line in lines[proposals_at + 2:])
  lines = lines[:proposals_at] + lines[proposals_at + 2:]
  pretext = os.path.join(root, 'seed0', PRETEXT)
  for line, name in zip(lines[1:], TRAINING_ORDER[1:]):
    config_file, experiment, pretrained, _ = VOC_JOBS[name]
    flags = line.split()
    assert line.startswith(
        f'python main.py --config=configs/{config_file} '
        f'--workdir={os.path.join(root, "seed0", name)} '
        f'--config.experiment={experiment} '), line
    assert f'--config.dataset={devkit}' in flags, line
    if pretrained == 'random':
      assert {'--config.pretrained=random',
              '--config.model.name=alexnet'} <= set(flags), line
    else:
      assert f'--config.pretrained={pretext}' in flags, line
  assert not os.path.exists(root)  # A dry run writes nothing.

  # --proposals: files instead of the two jobs, given to detection.
  template = str(tmp_path / 'ss_{split}.mat')
  for split in ('trainval', 'test'):
    (tmp_path / f'ss_{split}.mat').write_bytes(b'')
  reproduce.reproduce('pascal', root, dry_run=True, voc_dataset=devkit,
                      proposals=template)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(TRAINING_ORDER)
  assert not any('rotnet-proposals' in line for line in lines)
  (detection,) = [l for l in lines if 'voc07_detection.py' in l]
  assert f'--config.proposals={template}' in shlex.split(detection)
  assert sum('--config.proposals=' in l for l in lines) == 1
  with pytest.raises(reproduce.InputError, match=r'must hold \{split\}'):
    reproduce.reproduce('pascal', root, dry_run=True, voc_dataset=devkit,
                        proposals=str(tmp_path / 'ss_test.mat'))
  missing = str(tmp_path / 'nowhere_{split}.npz')
  with pytest.raises(reproduce.MissingInputError,
                     match=r'nowhere_trainval\.npz \(split trainval\) '
                           'does not exist'):
    reproduce.reproduce('pascal', root, dry_run=True, voc_dataset=devkit,
                        proposals=missing)
  with pytest.raises(reproduce.InputError,
                     match='^--proposals: table4 has no detection job'):
    reproduce.reproduce('table4', root, dry_run=True, proposals=template)
  assert not os.path.exists(root)

  # No --voc_dataset: segmentation's ./VOCdevkit is not there.
  (tmp_path / 'elsewhere').mkdir()
  monkeypatch.chdir(tmp_path / 'elsewhere')
  with pytest.raises(reproduce.InputError,
                     match=r"^table7/voc12_segmentation: its dataset "
                           r"'\./VOCdevkit' is not PASCAL VOC: give "
                           r'--voc_dataset=<VOCdevkit folder>'):
    reproduce.reproduce('pascal', root, dry_run=True)
  # --quick must not fall back on the whole datasets; nothing is made.
  quick_root = tmp_path / 'quick'
  with pytest.raises(reproduce.InputError,
                     match=r'^table7 --quick needs --voc_dataset='):
    reproduce.reproduce('table7', str(quick_root), quick=True,
                        overrides=reproduce.quick_overrides('table7', root))
  assert not quick_root.exists()


# Processes; the same refusals in-process: the dry-run test above.
@pytest.mark.slow
@pytest.mark.parametrize('args,names', [
    (['table7', '--quick', '--dataset=/data/in'],
     ('table7 --quick needs --voc_dataset=<VOCdevkit folder>',)),
    (['table4', '--voc_dataset=/data/VOCdevkit'],
     ('--voc_dataset', 'table4 has no PASCAL VOC jobs')),
], ids=['quick-without-voc', 'voc-in-table4'])
def test_pascal_command_line_errors(args, names, tmp_path):
  root = tmp_path / 'root'
  result = subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.reproduce', *args, f'--root={root}'],
      cwd=helpers.REPO_ROOT, check=False, capture_output=True, text=True,
      env=helpers.one_device_env())
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and all(n in errors[0] for n in names), (
      result.stderr[-2000:])
  assert not root.exists()


def _write_transfer_results(folder, experiment, score, *, dataset,
                            num_epochs=256, width=1.0, **head_fields):
  """A ``results.json`` of a transfer run as training writes it: the head
  is the task, scored by its metric (a final `score`, a test-selected
  best of ``score + 0.02`` at epoch 3)."""
  task = ('voc_segmentation' if 'segmentation' in experiment
          else 'voc_detection' if 'detection' in experiment
          else 'voc_classification')
  metric = 'mIoU' if task == 'voc_segmentation' else 'mAP'
  head = dict({
      'head': task, 'metric': metric, f'final_test_{metric}': score,
      'final_epoch': num_epochs,
      f'best_test_{metric}_test_selected': score + 0.02,
      'best_epoch_test_selected': 3, 'test_samples': 4952,
      'transfer_task': task, 'dataset': dataset}, **head_fields)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump({'experiment': experiment, 'mode': 'transfer',
               'dataset': dataset, 'pipeline': 'device',
               'num_epochs': num_epochs, 'complete': True,
               'model_width': width, 'heads': [head]}, f)


def test_report_shows_pascal_rows_against_the_paper(tmp_path, capsys):
  fc6_8 = 'table7/rotnet_alexnet/classification_fc6_8'
  for seed, score in ((0, 0.70), (1, 0.72)):
    _write_transfer_results(tmp_path / f'seed{seed}' / 'fc6_8', fc6_8,
                            score, dataset='voc/2007')
  _write_transfer_results(tmp_path / 'quick', fc6_8, 0.2,
                          dataset='/data/VOCdevkit', num_epochs=8,
                          width=1 / 16)
  _write_transfer_results(tmp_path / 'random',
                          'table7/random_alexnet/classification_all', 0.5,
                          dataset='/data/VOCdevkit',
                          random_batch_stats='reestimated')
  _write_transfer_results(tmp_path / 'segmentation',
                          'table7/rotnet_alexnet/segmentation', 0.4,
                          dataset='./VOCdevkit', num_epochs=100)
  # Detection: the voc_detection head's final_test_mAP (its best is the
  # test-selected column); TFDS voc/2007 is not comparable (no XML).
  detection = 'table7/rotnet_alexnet/detection'
  _write_transfer_results(tmp_path / 'detection', detection, 0.512,
                          dataset='/data/VOCdevkit', num_epochs=16)
  _write_transfer_results(tmp_path / 'detection_tfds', detection, 0.3,
                          dataset='voc/2007', num_epochs=16)
  # A mAP head without its mAP (an accuracy instead) is not a result.
  _write_transfer_results(tmp_path / 'bad', fc6_8, 0.9, dataset='voc/2007')
  with open(tmp_path / 'bad' / 'results.json') as f:
    bad = json.load(f)
  head = bad['heads'][0]
  head['final_test_accuracy'] = head.pop('final_test_mAP')
  with open(tmp_path / 'bad' / 'results.json', 'w') as f:
    json.dump(bad, f)
  skipped = []
  rows = report.collect(str(tmp_path), skipped)
  assert [(os.path.basename(os.path.dirname(p)), 'final_test_mAP' in r)
          for p, r in skipped] == [('bad', True)]
  assert {r['metric'] for r in rows} == {'mAP', 'mIoU'}
  table = report.markdown_table(rows)
  lines = table.splitlines()
  classification = '| PASCAL VOC07 classification (mAP): '
  assert lines[2:] == [
      # A quick run: its own row (settings in order), not compared.
      f'{classification}RotNet AlexNet, fc6-8 trained | voc_classification '
      '| 70.87 | 20.00 | n/a (not the protocol) | 22.00 (epoch 3) | 1 | 8 '
      '| 0.0625 | /data/VOCdevkit |',
      # Mean ± std of 70 and 72 against 70.87; the best epoch's 72 and 74.
      f'{classification}RotNet AlexNet, fc6-8 trained | voc_classification '
      '| 70.87 | 71.00 ± 1.41 | +0.13 | 73.00 ± 1.41 (epoch 3) | 2 | 256 '
      '| 1 | voc/2007 |',
      f'{classification}random AlexNet, all trained (BN statistics: '
      'reestimated) | voc_classification | 53.30 | 50.00 | -3.30 | 52.00 '
      '(epoch 3) | 1 | 256 | 1 | /data/VOCdevkit |',
      # The rows of Table 7 not run yet, in the paper's order.
      f'{classification}RotNet AlexNet, all trained | voc_classification '
      '| 72.97 | not run yet | — | — | 0 | — | — | — |',
      # 51.2 against the paper's 54.4; then the TFDS run, apart.
      '| PASCAL VOC07 detection (mAP): RotNet AlexNet, Fast R-CNN | '
      'voc_detection | 54.40 | 51.20 | -3.20 | 53.20 (epoch 3) | 1 | 16 | '
      '1 | /data/VOCdevkit |',
      '| PASCAL VOC07 detection (mAP): RotNet AlexNet, Fast R-CNN | '
      'voc_detection | 54.40 | 30.00 | n/a (voc/2007) | 32.00 (epoch 3) | 1 '
      '| 16 | 1 | voc/2007 |',
      '| PASCAL VOC12 segmentation (mIoU): random AlexNet | '
      'voc_segmentation | 19.80 | not run yet | — | — | 0 | — | — | — |',
      '| PASCAL VOC12 segmentation (mIoU): RotNet AlexNet | '
      'voc_segmentation | 39.10 | 40.00 | +0.90 | 42.00 (epoch 3) | 1 | '
      '100 | 1 | ./VOCdevkit |',
  ]
  # Segmentation has no TFDS dataset: only a folder is comparable.
  segmentation = 'table7/rotnet_alexnet/segmentation'
  assert not paper.comparable('voc/2007', segmentation)
  assert paper.comparable('voc/2007', fc6_8)
  assert not paper.comparable('digits', fc6_8)

  capsys.readouterr()
  assert report_command.main(['report', str(tmp_path)]) == 0
  out, err = capsys.readouterr()
  assert out.rstrip('\n') == table and 'skipped' in err
  assert report_command.main(['report', '--paper', 'table7']) == 0
  out = capsys.readouterr().out
  assert out.startswith('Table 7: PASCAL VOC')
  assert f'(`{fc6_8}`)' in out and f'(`{segmentation}`)' in out
  lines = out.splitlines()
  assert lines[2] == ('| method | classification (fc6-8) | classification '
                      '(all) | detection | segmentation | ours |')
  assert '| ImageNet labels | 78.9 | 79.9 | 56.8 | 48.0 | — |' in lines
  (rotnet,) = [l for l in lines if l.startswith('| RotNet |')]
  assert rotnet.startswith('| RotNet | 70.87 | 72.97 | 54.4 | 39.1 | ')
  assert f'(`{detection}`)' in rotnet


def test_the_comparison_chart_has_a_pascal_panel(tmp_path):
  plots = pytest.importorskip('rotnet_jax.experiments.plots')
  pytest.importorskip('matplotlib')
  _write_transfer_results(tmp_path / 'fc6_8',
                          'table7/rotnet_alexnet/classification_fc6_8', 0.7,
                          dataset='voc/2007')
  _write_transfer_results(tmp_path / 'segmentation',
                          'table7/rotnet_alexnet/segmentation', 0.4,
                          dataset='./VOCdevkit', num_epochs=100)
  fig = plots.paper_comparison(str(tmp_path))
  (ax,) = fig.axes
  assert ax.get_title().startswith('Table 7: PASCAL VOC')
  assert ax.get_ylabel() == 'test mAP / mIoU (%)'
  heights = sorted(round(p.get_height(), 2) for p in ax.patches)
  assert heights == [39.1, 40.0, 70.0, 70.87]


# Seven runs (a 4-epoch AlexNet pretext and six fine-tunings) and the
# selective search of 40 small images, a few minutes on the project's
# 2-core machine: the slow tier. The fast tier
# covers the jobs, their configs and printed commands, and the report.
@pytest.mark.slow
def test_quick_pascal_table_end_to_end(tmp_path, capsys, monkeypatch):
  images = write_imagenet_folder(str(tmp_path / 'imagenet')).root
  devkit = voc_folder.write_vocdevkit(str(tmp_path / 'voc'))
  root = str(tmp_path / 'runs')
  command = subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.reproduce', 'pascal',
       f'--root={root}', '--quick', f'--dataset={images}',
       f'--voc_dataset={devkit}'],
      cwd=helpers.REPO_ROOT, check=False, capture_output=True, text=True,
      env=helpers.one_device_env())
  assert command.returncode == 0, command.stderr[-3000:]
  pretext = os.path.join(root, 'seed0', PRETEXT)
  # The proposals jobs wrote rotnet-proposals' files beside the data.
  assert sorted(os.listdir(os.path.join(devkit, 'VOC2007', 'proposals'))) == [
      f'selective_search_fast_{split}.npz' for split in ('test', 'trainval')]
  for name, (_, experiment, pretrained, _) in VOC_JOBS.items():
    workdir = os.path.join(root, 'seed0', name)
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
    assert results['complete'] and results['experiment'] == experiment
    (head,) = results['heads']
    segmentation = 'segmentation' in name
    metric = 'mIoU' if segmentation else 'mAP'
    assert head['metric'] == metric and 0 <= head[f'final_test_{metric}'] <= 1
    # The generated devkit's whole test split: 5 segmentation val images,
    # 20 VOC2007 test images.
    assert head['test_samples'] == (5 if segmentation else 20)
    assert config['pretrained'] == (pretext if pretrained == PRETEXT
                                    else 'random')
    assert config['dataset'] == devkit
    if name == DETECTION:
      assert (config['num_epochs'], config['batch_size'],
              config['train_scales'], config['proposals']) == (
                  1, 2, [64, 80], '')
      assert sorted(os.listdir(os.path.join(workdir, 'detections'))) == [
          f'comp4_det_test_{c}.txt' for c in sorted(voc.CLASSES)]
    else:
      assert (config['num_epochs'], config['batch_size'],
              config['transfer_image_size']) == (
                  (3, 4, 80) if segmentation else (8, 8, 64))
    assert (config['image_size'], config['model']['width']) == (64, 1 / 16)

  # Everything finished: a second run trains and computes nothing.
  def not_again(*args):
    raise AssertionError(f'{args} ran again')

  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', not_again)
  monkeypatch.setattr(reproduce.proposals_lib, 'compute_splits', not_again)
  reproduce.reproduce('pascal', root, scale=reproduce.QUICK_SCALE,
                      overrides=reproduce.quick_overrides('pascal', images),
                      voc_dataset=devkit, quick=True)

  capsys.readouterr()
  assert report_command.main(['report', root]) == 0
  lines = capsys.readouterr().out.splitlines()
  for _, experiment, _, number in VOC_JOBS.values():
    (line,) = [l for l in lines
               if l.startswith(f'| {paper.describe(experiment)} ')]
    assert f'| {number:.2f} | ' in line, line
    assert 'n/a (not the protocol)' in line, line
  assert not any(report.NOT_RUN in l for l in lines)
