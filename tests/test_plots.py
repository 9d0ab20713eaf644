"""Pictures: the plotted values are the files' values, bad input one line."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

import helpers
from helpers import tiny_config
from helpers import write_results as _write_results
from rotnet_jax import parallel
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import plots
from rotnet_jax.training import metrics
from rotnet_jax.training import train

# matplotlib is optional for rotnet-jax (plots.py imports it on first use).
BarContainer = pytest.importorskip('matplotlib.container').BarContainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A real 2-epoch pretext run (a log line per step: 5 per epoch)."""
  folder = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(tiny_config(num_epochs=2, log_every_steps=1),
                           folder, mesh=parallel.make_mesh(jax.devices()[:1]))
  return folder


def _axes(fig, title):
  found = [ax for ax in fig.axes if ax.get_title() == title]
  assert len(found) == 1, [ax.get_title() for ax in fig.axes]
  return found[0]


def _line(ax, label):
  found = [line for line in ax.get_lines() if line.get_label() == label]
  assert len(found) == 1, [line.get_label() for line in ax.get_lines()]
  return found[0].get_xydata()


def _expected(events, split, key, head=None):
  return np.array([(e['epoch'], e[key]) for e in events
                   if e['split'] == split and (head is None or
                                               e['head'] == head)])


def _check_curves(fig, events, heads):
  for head in heads:
    for key in ('loss', 'accuracy'):
      ax = _axes(fig, f'{head}: {key}')
      for split in ('train', 'test'):
        np.testing.assert_array_equal(
            _line(ax, split), _expected(events, split, key, head))
  # Speeds are the same for every head of a step: drawn once, first head's.
  first = [e for e in events if e['head'] == heads[0]]
  ax = _axes(fig, 'images/s')
  np.testing.assert_array_equal(
      _line(ax, 'train steps'), _expected(first, 'train', 'images_per_sec'))
  np.testing.assert_array_equal(
      _line(ax, 'evaluation'), _expected(first, 'test', 'images_per_sec'))
  titles = [ax.get_title() for ax in fig.axes]
  if any('learning_rate' in e for e in events):
    np.testing.assert_array_equal(
        _line(_axes(fig, 'learning rate'), 'train'),
        _expected(first, 'train', 'learning_rate'))
  else:
    assert 'learning rate' not in titles
  assert len(titles) == 2 * len(heads) + (2 if 'learning rate' in titles
                                          else 1)


def _size(path):
  with Image.open(path) as image:
    image.verify()  # A complete, valid PNG...
  with Image.open(path) as image:
    return image.format, image.size  # ...of the figure's size.


@pytest.mark.slow  # A training run; a real run's curves: test_transfer.py::test_classification_end_to_end, the drawing of every series: test_curves_of_several_heads_with_learning_rate.
def test_curves_of_a_real_run(workdir, tmp_path):
  events = metrics.read_jsonl(workdir)
  assert {e['head'] for e in events} == {'rotation'}
  assert len([e for e in events if e['split'] == 'train']) == 10
  _check_curves(plots.training_curves(workdir), events, ['rotation'])
  out = tmp_path / 'out'
  written = plots.plot_path(workdir, str(out))
  assert written == [str(out / 'curves.png')]
  # 12 x (1 head + 1) * 3 inches at 100 dpi.
  assert _size(written[0]) == ('PNG', (1200, 600))
  assert os.listdir(out) == ['curves.png']  # No temporary file left.


def _write_metrics(folder, *, epochs, heads, train_per_epoch=4,
                   learning_rate=True):
  """A metrics.jsonl as a run of `epochs` epochs would write it."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  lines, step = [], 0
  for epoch in range(epochs):
    for i in range(train_per_epoch):
      step += 1
      for head in heads:
        event = dict(step=step, epoch=round(epoch + (i + 1) / train_per_epoch,
                                            4), split='train', head=head,
                     loss=float(rng.uniform(0, 2)),
                     accuracy=float(rng.uniform()), images_per_sec=1000.0 +
                     step)
        if learning_rate:
          event['learning_rate'] = 0.1 * 0.2 ** (epoch // 60)
        lines.append(event)
    for head in heads:
      lines.append(dict(step=step, epoch=float(epoch + 1), split='test',
                        head=head, loss=float(rng.uniform(0, 2)),
                        accuracy=float(rng.uniform()),
                        images_per_sec=5000.0 + step))
  with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(e) + '\n' for e in lines)
  return lines


def test_curves_of_several_heads_with_learning_rate(tmp_path):
  events = _write_metrics(tmp_path, epochs=3, heads=['conv1', 'conv2'])
  _check_curves(plots.training_curves(str(tmp_path)), events,
                ['conv1', 'conv2'])
  # A torn last line (a crash mid-write) is dropped, as a resuming run does.
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 13, "epo')
  written = plots.plot_path(str(tmp_path), str(tmp_path / 'out'))
  assert _size(written[0]) == ('PNG', (1200, 900))


def test_a_200_epoch_file_plots_in_seconds(tmp_path):
  # CIFAR-10 pretext: 390 steps per epoch logged every 100, a test per epoch.
  events = _write_metrics(tmp_path, epochs=200, heads=['rotation'])
  assert len(events) == 1000
  start = time.perf_counter()
  written = plots.plot_path(str(tmp_path), str(tmp_path))
  seconds = time.perf_counter() - start
  print(f'200-epoch metrics.jsonl ({len(events)} events) plotted in '
        f'{seconds:.2f} s')
  assert _size(written[0]) == ('PNG', (1200, 600))
  assert seconds < 30


def _reproduce_root(root):
  for seed, acc in ((0, 0.88), (1, 0.90)):
    _write_results(root / f'seed{seed}/table1/nin4_multlayer',
                   'table1/nin4/multlayer', {'conv1': 0.85, 'conv2': acc})
    for k, rotnet, supervised in ((20, 0.60 + seed / 100, 0.40),
                                  (100, 0.75, 0.65 + seed / 100)):
      _write_results(root / f'seed{seed}/semi/rotnet_conv_k{k}',
                     f'semi/rotnet_conv/k{k}', {'conv2': rotnet})
      _write_results(root / f'seed{seed}/semi/supervised_nin3_k{k}',
                     f'semi/supervised_nin3/k{k}', {'classifier': supervised},
                     num_epochs=200)
  _write_results(root / 'seed0/table3/rotnet_conv', 'table3/rotnet_conv',
                 {'conv2': 0.91})
  _write_results(root / 'seed0/pretext/nin4', 'pretext/nin4',
                 {'rotation': 0.93}, num_epochs=200)
  # An unfinished run is left out of every picture.
  _write_results(root / 'seed2/table1/nin4_multlayer',
                 'table1/nin4/multlayer', {'conv1': 0.1, 'conv2': 0.1},
                 complete=False)


def _bars(ax, label):
  found = [c for c in ax.containers
           if isinstance(c, BarContainer) and c.get_label() == label]
  assert len(found) == 1
  return [patch.get_height() for patch in found[0].patches], found[0]


def test_paper_comparison_and_semi_supervised(tmp_path):
  _reproduce_root(tmp_path)
  fig = plots.paper_comparison(str(tmp_path))
  titles = [ax.get_title() for ax in fig.axes]
  assert len(titles) == 3 and titles[0].startswith('Table 1')
  assert titles[1].startswith('Table 3') and titles[2].startswith('Exp')
  table1, table3, other = fig.axes
  ours = 'ours (final epoch; mean ± std of seeds)'
  paper = 'paper'  # Every CIFAR-10 number has a source: none is starred.
  assert _bars(table1, paper)[0] == [85.07, 89.06]
  heights, bars = _bars(table1, ours)
  np.testing.assert_allclose(heights, [85.0, 89.0])  # Seeds 0 and 1 only.
  # Error bars: the sample std of the seeds, +-1.41 around 89.
  segments = bars.errorbar.lines[2][0].get_segments()
  np.testing.assert_allclose(segments[1][:, 1],
                             [89 - np.sqrt(2), 89 + np.sqrt(2)])
  assert _bars(table3, paper)[0] == [91.16]
  assert _bars(table3, ours)[0] == [91.0]
  assert [c.get_label() for c in other.containers
          if isinstance(c, BarContainer)] == [ours]
  assert _bars(other, ours)[0] == [93.0]  # No paper number: ours alone.
  assert [t.get_text().split('\n')[0] for t in other.get_xticklabels()] == [
      'Pretext NIN-4 (rotation accuracy)']

  ax, = plots.semi_supervised(str(tmp_path)).axes
  assert ax.get_xscale() == 'log'
  np.testing.assert_allclose(_line(ax, 'RotNet + conv (conv2)'),
                             [(20, 60.5), (100, 75.0)])
  np.testing.assert_allclose(_line(ax, 'supervised NIN-3 (classifier)'),
                             [(20, 40.0), (100, 65.5)])

  written = plots.plot_path(str(tmp_path), str(tmp_path / 'out'))
  assert [os.path.basename(p) for p in written] == [
      'paper_comparison.png', 'semi_supervised.png']
  assert _size(written[0]) == ('PNG', (1200, 1350))  # 3 panels x 4.5 in.
  assert _size(written[1]) == ('PNG', (700, 500))


def test_alexnet_tables_have_panels_and_only_unconfirmed_numbers_starred(
    tmp_path):
  blocks = {f'conv{b}': 0.3 for b in range(1, 6)}
  _write_results(tmp_path / 'nonlinear', 'table4/rotnet_alexnet/nonlinear',
                 {'conv4': 0.52, 'conv5': 0.46}, dataset='imagenet2012',
                 num_epochs=40)
  # Both numberings' names (an old root's runs are today's rows).
  _write_results(tmp_path / 'linear', 'table4/rotnet_alexnet/linear', blocks,
                 dataset='imagenet2012', num_epochs=35)
  _write_results(tmp_path / 'places', 'table5/rotnet_alexnet/places_linear',
                 {'conv1': 0.2}, dataset='/data/places205', num_epochs=35)
  fig = plots.paper_comparison(str(tmp_path))
  assert [ax.get_title().split(':')[0] for ax in fig.axes] == [
      'Table 4', 'Table 5', 'Table 6']
  table4, table5, table6 = fig.axes
  assert _bars(table4, 'paper')[0] == [50.0, 43.8]
  # The bars' labels: the paper's (first), then ours.
  assert [t.get_text() for t in table4.texts][:2] == ['50.00', '43.80']
  assert _bars(table5, 'paper')[0] == [18.8, 31.7, 38.7, 38.2, 36.5]
  # Places (Table 6): no source confirms it; the bar and legend say so.
  heights, _ = _bars(table6, plots.UNCONFIRMED_LABEL)
  assert heights == [21.5]
  assert '21.50*' in [t.get_text() for t in table6.texts]
  assert not any('*' in t.get_text() for ax in (table4, table5)
                 for t in ax.texts)


def _bad_inputs(tmp_path):
  """(path, --out, what the message says) for each kind of bad input."""
  empty_folder = tmp_path / 'nothing'
  empty_folder.mkdir()
  empty_metrics = tmp_path / 'empty'
  empty_metrics.mkdir()
  (empty_metrics / 'metrics.jsonl').write_text('')
  torn = tmp_path / 'torn'
  torn.mkdir()  # A run that crashed writing its first line.
  (torn / 'metrics.jsonl').write_text('{"step": 5, "epoch": 1.0, "spl')
  damaged = tmp_path / 'damaged'
  damaged.mkdir()
  (damaged / 'metrics.jsonl').write_text('garbage\n{"step": 5}\n')
  unfinished = tmp_path / 'unfinished'
  _write_results(unfinished / 'seed0/table3/rotnet_conv',
                 'table3/rotnet_conv', {'conv2': 0.5}, complete=False)
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  _write_metrics(tmp_path / 'good', epochs=1, heads=['rotation'])
  return [
      (empty_folder, None, 'holds no metrics.jsonl and no results.json'),
      (empty_metrics, None, 'has no events yet'),
      (torn, None, 'has no events yet'),
      (damaged, None, 'line 1 is not a metric event'),
      (unfinished, None, 'holds no finished run'),
      (tmp_path / 'missing', None, 'is not a folder'),
      (tmp_path / 'good', a_file, 'is a file'),
  ]


def test_bad_input_is_one_error_naming_the_path(tmp_path):
  for path, out, message in _bad_inputs(tmp_path):
    out = out or tmp_path / 'out'
    with pytest.raises(InputError, match=message) as error:
      plots.plot_path(str(path), str(out))
    named = out if 'is a file' in message else path
    assert str(named) in str(error.value)
    assert not os.path.exists(tmp_path / 'out')  # Nothing written.


# Two processes: the slow tier (the default run draws a real run's curves
# in this process, test_curves_of_a_real_run).
@pytest.mark.slow
def test_command_prints_files_and_fails_in_one_line(workdir, tmp_path):
  # Two kinds through the real command (the rest: the test above).
  cases = _bad_inputs(tmp_path)[1:2] + [(tmp_path / 'good',
                                         tmp_path / 'a_file', 'is a file')]
  runs = [([str(path)] + ([f'--out={out}'] if out else []), message)
          for path, out, message in cases]
  runs += [([], 'pass one folder'), ([workdir, f'--out={tmp_path}/ok'], None)]
  env = helpers.one_device_env()
  # Started together: each is mostly Python start-up (JAX, matplotlib).
  processes = [(subprocess.Popen(
      [sys.executable, '-m', 'rotnet_jax.plot'] + args, cwd=REPO_ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                message) for args, message in runs]
  for process, message in processes:
    stdout, stderr = process.communicate(timeout=120)
    if message is None:
      assert process.returncode == 0, stderr
      assert stdout.split() == [f'{tmp_path}/ok/curves.png']
      continue
    errors = [line for line in stderr.splitlines() if 'error' in line.lower()]
    assert process.returncode == 2, stderr
    assert len(errors) == 1 and errors[0].startswith('error: '), stderr
    assert message in errors[0] and 'Traceback' not in stderr
    assert stdout == ''
  assert sorted(os.listdir(f'{tmp_path}/ok')) == ['curves.png']
