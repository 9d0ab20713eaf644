"""The ImageNet and Places tables end to end on a small ImageNet-style folder.

``python -m rotnet_jax.reproduce imagenet --quick --dataset=FOLDER`` (run
in-process, with the overrides the command builds) trains the RotNet
AlexNet pretext task, checkpoints it, and trains the non-linear heads on
conv4 and conv5 (Table 4) and the linear probes on conv1..conv5 (Table 5)
on its frozen features; ``table6`` through the real command line then
adds the Places probes on the same pretext run. The folder has what ILSVRC 2012 has:
JPEGs of varied sizes, grayscale and CMYK ones, a PNG named ``.JPEG``.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from imagenet_folder import write_imagenet_folder
from rotnet_jax.commands import report as report_command
from rotnet_jax.experiments import paper
from rotnet_jax.experiments import report
from rotnet_jax.experiments import reproduce
from rotnet_jax.training import metrics as metrics_lib

BLOCKS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
IMAGENET = {'seed0/pretext/imagenet_alexnet': ('rotation',),
            'seed0/table4/nonlinear_conv4': ('conv4',),
            'seed0/table4/nonlinear_conv5': ('conv5',),
            'seed0/table5/linear': BLOCKS}


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _mtimes(root):
  """Modification time of every file under `root`: a run that trains or
  writes anything changes some."""
  return {os.path.join(folder, name): os.path.getmtime(
      os.path.join(folder, name))
          for folder, _, names in os.walk(root) for name in names}


def _check_run(workdir, heads):
  results = _results(workdir)
  assert results['complete'], workdir
  assert [h['head'] for h in results['heads']] == list(heads), workdir
  for head in results['heads']:
    assert 0 <= head['final_test_accuracy'] <= 1, (workdir, head)
  events = metrics_lib.read_jsonl(workdir)
  train = [e for e in events if e['split'] == 'train']
  losses = [v for e in train for k, v in e.items() if 'loss' in k]
  assert losses and all(math.isfinite(v) for v in losses), (workdir, train)
  return results


# Minutes of AlexNet training: the slow tier.
@pytest.mark.slow
def test_imagenet_and_places_tables_on_an_image_folder(tmp_path, capsys,
                                                       monkeypatch):
  data = write_imagenet_folder(str(tmp_path / 'imagenet'))
  root = str(tmp_path / 'runs')
  overrides = reproduce.quick_overrides('imagenet', data.root)
  workdirs = reproduce.reproduce('imagenet', root,
                                 scale=reproduce.QUICK_SCALE,
                                 overrides=overrides)
  assert [os.path.relpath(w, root) for w in workdirs] == list(IMAGENET)
  for workdir, heads in zip(workdirs, IMAGENET.values()):
    results = _check_run(workdir, heads)
    # The folder's own test split (it has val/, not validation/), whole.
    assert results['heads'][0]['test_samples'] == (
        len(data.paths('val')) * (4 if heads == ('rotation',) else 1))
  pretext = workdirs[0]
  assert os.listdir(os.path.join(pretext, 'checkpoints'))
  for workdir in workdirs[1:]:
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
    assert config['pretrained'] == pretext
    # 64 pixels and 1/16 width, read back from the pretext run's weights.
    assert config['image_size'] == 64 and config['model']['width'] == 1 / 16

  # Table 6 through the command line: the pretext run is shared (skipped),
  # the Places probes read the same folder (--quick without
  # --places_dataset).
  before = _mtimes(root)
  command = subprocess.run(
      [sys.executable, '-m', 'rotnet_jax.reproduce', 'table6',
       f'--root={root}', '--quick', f'--dataset={data.root}'],
      cwd=REPO_ROOT, check=False, capture_output=True, text=True)
  assert command.returncode == 0, command.stderr[-3000:]
  places = os.path.join(root, 'seed0', 'table6', 'places_linear')
  _check_run(places, BLOCKS)
  after = _mtimes(root)
  assert {p: t for p, t in after.items() if p in before} == before
  assert all(p.startswith(places) for p in set(after) - set(before))

  # Both tables again: everything finished, nothing runs or is written.
  # (A finished run would also return at once if trained again: skipping
  # is checked apart, by the driver not being called at all.)
  def no_training(config, workdir):
    raise AssertionError(f'{workdir} ran again')

  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', no_training)
  reproduce.reproduce('imagenet', root, scale=reproduce.QUICK_SCALE,
                      overrides=overrides)
  reproduce.reproduce('table6', root, scale=reproduce.QUICK_SCALE,
                      overrides=overrides, places_dataset=data.root)
  assert _mtimes(root) == after

  capsys.readouterr()
  assert report_command.main(['report', root]) == 0
  table = capsys.readouterr().out
  names = {'table4/rotnet_alexnet/nonlinear': ('conv4', 'conv5'),
           'table5/rotnet_alexnet/linear': BLOCKS,
           'table6/rotnet_alexnet/places_linear': BLOCKS}
  for experiment, blocks in names.items():
    for block in blocks:
      number = paper.paper_accuracy(experiment, block)
      star = '' if paper.confirmed(experiment, block) else '*'
      cell = '—' if number is None else f'{number:.2f}{star}'
      # Paper number (starred if no source confirms it) next to ours; a
      # 1/16-width, 4-epoch run is not compared with it.
      line = f'| {paper.describe(experiment)} | {block} | {cell} | '
      row = next((l for l in table.splitlines() if l.startswith(line)),
                 None)
      assert row is not None, (line, table)
      assert ('n/a (not the protocol)' if number is not None
              else '| — |') in row, row
  assert '| 18.80 |' in table and '| 43.80 |' in table
  assert '| 21.50* |' in table  # Places: no source confirms it.
  assert table.rstrip().endswith(report.UNCONFIRMED_NOTE)
