"""A detection run's pictures and report row, from a hand-made workdir.

The workdir holds what a ``transfer_task='voc_detection'`` run leaves
(``config.json``, ``results.json``, ``metrics.jsonl`` with two tests and
``detections/comp4_det_test_<class>.txt``) for a small shapes devkit
(``voc_detection_folder.write_shapes_devkit``); every drawn value is
checked against the files.
"""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import paper
from rotnet_jax.experiments import plots
from rotnet_jax.experiments import report
from voc_detection_folder import write_shapes_devkit

pytest.importorskip('matplotlib')

EXPERIMENT = 'table7/rotnet_alexnet/detection'
# The last test's AP of each class: 0.05 steps, bottle and cow NaN (no
# object of theirs in the split).
LAST_APS = {name: 0.05 * (k + 1) for k, name in enumerate(voc.CLASSES)}
LAST_APS['bottle'] = LAST_APS['cow'] = math.nan
LAST_MAP = 0.512
# The first test's: other numbers, which no picture may show.
FIRST_APS = {name: 0.01 for name in voc.CLASSES}

# The detections of the first five test images (index in the split):
# ``(class, score, 1-based (xmin, ymin, xmax, ymax))``.
DETECTIONS = {
    # 12 at >= 0.5 and 2 below: the best 10 are drawn.
    0: [('car', 0.5 + 0.04 * k, (1 + k, 2, 30 + k, 40)) for k in range(12)]
       + [('person', 0.45, (5, 5, 20, 20)), ('dog', 0.1, (1, 1, 9, 9))],
    # 0.5 counts (>=); 0.49 does not.
    1: [('person', 0.9, (11, 21, 50, 60)), ('car', 0.5, (2, 3, 4, 5)),
        ('aeroplane', 0.49, (1, 1, 8, 8)), ('bird', 0.2, (1, 1, 8, 8))],
    # None reaches 0.5: the best 3.
    2: [('cat', 0.05, (1, 1, 5, 5)), ('cat', 0.3, (2, 2, 6, 6)),
        ('horse', 0.2, (3, 3, 7, 7)), ('sheep', 0.1, (4, 4, 8, 8))],
    # 3: no detection at all.
    # Not among the first 4 images: never drawn.
    4: [('train', 0.99, (1, 1, 30, 30))] * 3,
}
EXPECTED_LABELS = {
    0: [f'car {0.5 + 0.04 * k:.2f}' for k in range(11, 1, -1)],
    1: ['person 0.90', 'car 0.50'],
    2: ['cat 0.30', 'horse 0.20', 'sheep 0.10'],
    3: [],
}


@pytest.fixture(scope='module')
def devkit(tmp_path_factory):
  return write_shapes_devkit(str(tmp_path_factory.mktemp('voc')),
                             trainval=2, test=6, proposals_per_image=4)


def _event(step, epoch, split, **values):
  return dict(step=step, epoch=epoch, split=split, head='voc_detection',
              **values)


def write_detection_workdir(folder, devkit, *, detections=True,
                            tests=True) -> str:
  """A detection run's workdir as training leaves it (see the module
  docstring); `detections`/`tests`: write the folder / the test events."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump({'experiment': EXPERIMENT, 'mode': 'transfer',
               'transfer_task': 'voc_detection', 'dataset': devkit,
               'train_split': 'trainval', 'test_split': 'test',
               'num_epochs': 16}, f)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump({'experiment': EXPERIMENT, 'mode': 'transfer',
               'dataset': devkit, 'pipeline': 'device', 'num_epochs': 16,
               'complete': True, 'model_width': 1.0, 'heads': [{
                   'head': 'voc_detection', 'metric': 'mAP',
                   'final_test_mAP': LAST_MAP, 'final_epoch': 16,
                   'best_test_mAP_test_selected': 0.53,
                   'best_epoch_test_selected': 12, 'test_samples': 6,
                   'transfer_task': 'voc_detection'}]}, f)
  events = [_event(10, 4.0, 'train', loss=1.5, mAP=0.0,
                   learning_rate=0.001, images_per_sec=30.0),
            _event(20, 8.0, 'train', loss=1.0, mAP=0.0,
                   learning_rate=0.001, images_per_sec=31.0)]
  if tests:
    events[1:1] = [_event(10, 4.0, 'test', loss=1.2, mAP=0.01,
                          mAP_all_points=0.01, images_per_sec=50.0,
                          **{f'AP_{n}': v for n, v in FIRST_APS.items()})]
    events.append(_event(20, 8.0, 'test', loss=0.9, mAP=LAST_MAP,
                         mAP_all_points=0.52, images_per_sec=51.0,
                         **{f'AP_{n}': v for n, v in LAST_APS.items()}))
  with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(e) + '\n' for e in events))  # NaN as NaN.
  if detections:
    ids = voc.open_detection(devkit, 'test').ids
    lines = {name: [] for name in voc.CLASSES}
    for index, found in DETECTIONS.items():
      for name, score, box in found:
        lines[name].append(f'{ids[index]} {score:.6f} '
                           + ' '.join(f'{v:.1f}' for v in box))
    os.makedirs(os.path.join(folder, 'detections'))
    for name, text in lines.items():
      with open(os.path.join(folder, 'detections',
                             f'comp4_det_test_{name}.txt'), 'w') as f:
        f.write(''.join(line + '\n' for line in text))
  return str(folder)


def test_ap_bars_are_the_last_tests_aps_nan_absent(devkit, tmp_path):
  workdir = write_detection_workdir(tmp_path / 'run', devkit)
  fig = plots.detection_ap(workdir)
  (ax,) = fig.axes
  (bars,) = ax.containers
  present = [k for k, name in enumerate(voc.CLASSES)
             if not math.isnan(LAST_APS[name])]
  assert len(present) == 18
  np.testing.assert_allclose([p.get_height() for p in bars.patches],
                             [100 * LAST_APS[voc.CLASSES[k]]
                              for k in present])
  np.testing.assert_allclose(
      [p.get_x() + p.get_width() / 2 for p in bars.patches], present)
  assert [t.get_text() for t in ax.get_xticklabels()] == list(voc.CLASSES)
  # The NaN classes: no bar, 'n/a' at their ticks.
  assert sorted(t.get_position()[0] for t in ax.texts
                if t.get_text() == 'n/a') == [
                    voc.CLASSES.index('bottle'), voc.CLASSES.index('cow')]
  assert ax.get_title().endswith('test, epoch 8.0: mAP 51.20 %')
  (line,) = ax.get_lines()
  assert line.get_ydata()[0] == pytest.approx(100 * LAST_MAP)


def test_detections_are_drawn_on_the_first_test_images(devkit, tmp_path):
  workdir = write_detection_workdir(tmp_path / 'run', devkit)
  split = voc.open_detection(devkit, 'test')
  fig = plots.detections(workdir)
  axes = [ax for ax in fig.axes if ax.get_images()]
  assert [ax.get_title().split(':')[0] for ax in axes] == list(
      split.ids[:4])
  for index, ax in enumerate(axes):
    drawn = [p for p in ax.patches if p.get_gid() == 'detection']
    labels = [t.get_text() for t in ax.texts
              if t.get_gid() == 'detection_label']
    assert labels == EXPECTED_LABELS[index], index
    assert len(drawn) == len(labels)
    # The image shown is this id's JPEG.
    with Image.open(split.paths[index]) as image:
      np.testing.assert_array_equal(ax.get_images()[0].get_array(),
                                    np.asarray(image.convert('RGB')))
    # Ground truth: every box of its XML, dashed, around its pixels.
    truth = [p for p in ax.patches if p.get_gid() == 'ground_truth']
    assert len(truth) == len(split.boxes[index])
    for patch, (x1, y1, x2, y2) in zip(truth, split.boxes[index]):
      assert patch.get_linestyle() == '--'
      assert (patch.get_x(), patch.get_y(), patch.get_width(),
              patch.get_height()) == (x1 - 0.5, y1 - 0.5, x2 - x1 + 1,
                                      y2 - y1 + 1)
  assert axes[2].get_title().endswith('none scores >= 0.5: the best 3')
  assert axes[1].get_title().endswith('2 of 4 detections (score >= 0.5)')
  # The person of image 1, 1-based (11, 21, 50, 60): pixels 10..49 x
  # 20..59, drawn from their edges.
  person = [p for p in axes[1].patches if p.get_gid() == 'detection'][0]
  assert (person.get_x(), person.get_y(), person.get_width(),
          person.get_height()) == (9.5, 19.5, 40, 40)
  # Fewer images when asked; the split's size at most.
  assert len([a for a in plots.detections(workdir, 1).axes
              if a.get_images()]) == 1
  assert len([a for a in plots.detections(workdir, 50).axes
              if a.get_images()]) == len(split.ids) == 6


def test_plot_path_writes_the_detection_pictures(devkit, tmp_path,
                                                 monkeypatch):
  # The curves are test_plots.py's; a blank one keeps this test fast.
  blank = plots._figure(1, 1)  # pylint: disable=protected-access
  monkeypatch.setattr(plots, 'training_curves', lambda workdir: blank)
  workdir = write_detection_workdir(tmp_path / 'run', devkit)
  assert plots.is_detection_run(workdir)
  written = plots.plot_path(workdir, str(tmp_path / 'out'))
  assert [os.path.basename(p) for p in written] == [
      'curves.png', 'detection_ap.png', 'detections.png']
  assert all(os.path.getsize(p) > 0 for p in written)
  # Before its first test: the curves only (a running job plots).
  early = write_detection_workdir(tmp_path / 'early', devkit,
                                  detections=False, tests=False)
  assert [os.path.basename(p) for p in plots.plot_path(early)] == [
      'curves.png']


def test_missing_or_bad_detections_are_one_line_naming_them(devkit,
                                                            tmp_path):
  workdir = write_detection_workdir(tmp_path / 'run', devkit,
                                    detections=False)
  out = tmp_path / 'out'
  folder = os.path.join(workdir, 'detections')
  with pytest.raises(InputError, match=f'^{folder} not found: ') as error:
    plots.plot_path(workdir, str(out))
  assert '\n' not in str(error.value)
  assert not out.exists()  # Nothing written.
  os.makedirs(folder)
  with pytest.raises(InputError,
                     match='has no comp4_det_test_<class>.txt file'):
    plots.detections(workdir)
  split = voc.open_detection(devkit, 'test')
  path = os.path.join(folder, 'comp4_det_test_car.txt')
  with open(path, 'w') as f:
    f.write(f'{split.ids[5]} 0.9 1 1 5 5\n{split.ids[0]} 0.9 1 1 5\n')
  with pytest.raises(InputError, match=f'^{path} line 2: '):
    plots.detections(workdir)
  # A line of an image not drawn is not even read.
  with open(path, 'w') as f:
    f.write(f'{split.ids[5]} 0.9 1 1 5\n{split.ids[0]} 0.9 1 1 5 5\n')
  (ax,) = [a for a in plots.detections(workdir, 1).axes if a.get_images()]
  assert [t.get_text() for t in ax.texts
          if t.get_gid() == 'detection_label'] == ['car 0.90']


def test_the_report_and_chart_show_the_detection_column(devkit, tmp_path):
  write_detection_workdir(tmp_path / 'seed0' / 'table7' / 'voc07_detection',
                          devkit)
  rows = report.collect(str(tmp_path))
  (row,) = rows
  assert (row['head'], row['metric'], row['final']) == (
      'voc_detection', 'mAP', pytest.approx(51.2))
  lines = report.markdown_table(rows).splitlines()
  assert lines[2:] == [
      # Table 7 has a result: its other rows of ours are not run yet.
      '| PASCAL VOC07 classification (mAP): RotNet AlexNet, fc6-8 trained '
      '| voc_classification | 70.87 | not run yet | — | — | 0 | — | — | — |',
      '| PASCAL VOC07 classification (mAP): random AlexNet, all trained | '
      'voc_classification | 53.30 | not run yet | — | — | 0 | — | — | — |',
      '| PASCAL VOC07 classification (mAP): RotNet AlexNet, all trained | '
      'voc_classification | 72.97 | not run yet | — | — | 0 | — | — | — |',
      '| PASCAL VOC07 detection (mAP): RotNet AlexNet, Fast R-CNN | '
      f'voc_detection | 54.40 | 51.20 | -3.20 | 53.00 (epoch 12) | 1 | 16 '
      f'| 1 | {devkit} |',
      '| PASCAL VOC12 segmentation (mIoU): random AlexNet | '
      'voc_segmentation | 19.80 | not run yet | — | — | 0 | — | — | — |',
      '| PASCAL VOC12 segmentation (mIoU): RotNet AlexNet | '
      'voc_segmentation | 39.10 | not run yet | — | — | 0 | — | — | — |',
  ]
  # The paper's table: the supervised and RotNet detection numbers.
  table = report.paper_tables(['table7']).splitlines()
  assert '| ImageNet labels | 78.9 | 79.9 | 56.8 | 48.0 | — |' in table
  assert '| RotNet | 70.87 | 72.97 | 54.4 | 39.1 | ' in '\n'.join(table)
  assert paper.confirmed(EXPERIMENT, 'voc_detection')
  # The comparison chart: the paper's 54.4 beside our 51.2.
  (ax,) = plots.paper_comparison(str(tmp_path)).axes
  assert sorted(round(p.get_height(), 2) for p in ax.patches) == [
      51.2, 54.4]
