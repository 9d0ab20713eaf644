"""Pictures of runs: training curves, our numbers against the paper's.

    python -m rotnet_jax.plot WORKDIR --out=DIR     # DIR/curves.png
                                                    # (detection: also
                                                    # DIR/detection_ap.png,
                                                    # DIR/detections.png)
    python -m rotnet_jax.plot ROOT --out=DIR        # DIR/paper_comparison.png,
                                                    # DIR/semi_supervised.png

* :func:`training_curves`: one run's ``metrics.jsonl``: per head, loss and
  accuracy against epochs (train and test), images/s, and the learning
  rate when the events carry ``learning_rate``.
* :func:`paper_comparison`: a ``reproduce`` root: per table, a grouped bar
  chart of the paper's number and ours (final-epoch test accuracy, or
  PASCAL VOC's mAP and mIoU; mean over seeds, error bars the sample std)
  for every (experiment, block).
* :func:`semi_supervised`: accuracy against K, the labelled images per
  class, for the ``semi`` table's two networks, as in the paper's figure.
* :func:`detection_ap` and :func:`detections`, a PASCAL VOC detection
  run's (``transfer_task='voc_detection'``): its last test's average
  precision of each class (``metrics.jsonl``'s ``AP_<class>``, in %), and
  its detections (``WORKDIR/detections/comp4_det_<split>_<class>.txt``)
  drawn on the first test images with their ground truth.

Every plotted value is the one in the files, unrounded: the curves are
``metrics.jsonl``'s numbers, the bars ``report.collect``'s (accuracies in
%). Rows are grouped exactly as ``rotnet_jax.report`` groups them, so the
bars and the report's table agree.

matplotlib is imported on first use, and only its object-oriented API
(``matplotlib.figure.Figure`` drawn by the Agg canvas): no pyplot, no GUI
backend, no global figure registry, so this works headless and inside
programs that use matplotlib themselves.
"""

import collections
import dataclasses
import math
import re

import numpy as np
from absl import logging
from PIL import Image

from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import paper
from rotnet_jax.experiments import report
from rotnet_jax.training import metrics
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files

CURVES_FILE = 'curves.png'
PAPER_COMPARISON_FILE = 'paper_comparison.png'
SEMI_SUPERVISED_FILE = 'semi_supervised.png'
DETECTION_AP_FILE = 'detection_ap.png'
DETECTIONS_FILE = 'detections.png'

# Figure sizes in inches at DPI: the pictures are DPI times these pixels
# (``save`` keeps the size: no tight bounding box).
DPI = 100
CURVES_WIDTH = 12.0
CURVES_ROW_HEIGHT = 3.0
COMPARISON_WIDTH = 12.0
COMPARISON_PANEL_HEIGHT = 4.5
SEMI_SIZE = (7.0, 5.0)
DETECTION_AP_SIZE = (12.0, 5.0)
DETECTION_PANEL_SIZE = (6.0, 5.0)

# A detection run's pictures: its head (the transfer task), the test images
# drawn, and which of an image's detections are drawn (those scoring at
# least DETECTION_SCORE, the best DETECTION_MAX_BOXES of them; if none
# does, the best DETECTION_FALLBACK_BOXES, so a weak detector still shows
# where it looks).
DETECTION_HEAD = 'voc_detection'
DETECTION_IMAGES = 4
DETECTION_SCORE = 0.5
DETECTION_MAX_BOXES = 10
DETECTION_FALLBACK_BOXES = 3

TABLES = ('table1', 'table2', 'table3', 'table4', 'table5', 'table6',
          'table7')
_TABLE_TITLES = {
    'table1': 'Table 1: non-linear heads on every block of NIN-3/4/5 RotNets',
    'table2': 'Table 2: number of rotations (non-linear head on conv2)',
    'table3': 'Table 3: supervised, random init., RotNet + heads, fine-tuned',
    'table4': 'Table 4: ImageNet, non-linear heads on AlexNet conv4 / conv5',
    'table5': 'Table 5: ImageNet, linear probes on every AlexNet block',
    'table6': 'Table 6: Places, linear probes on the ImageNet AlexNet',
    'table7': 'Table 7: PASCAL VOC, the ImageNet AlexNet fine-tuned',
    'other': 'Experiments without a paper number (ours only)',
}
# A panel's y axis: accuracy, but PASCAL VOC's scores (the bars' names say
# which of the two).
_SCORES = {'table7': 'test mAP / mIoU (%)'}
# The legend of starred paper numbers (as the report's footnote).
UNCONFIRMED_LABEL = 'paper (* no source confirms it)'
# The head of events that name none (MetricWriter.write without head).
_NO_HEAD = 'all'
# The semi table's two networks, the two lines of the paper's figure.
SEMI_EXPERIMENTS = ('semi/rotnet_conv', 'semi/supervised_nin3')
_SEMI_NAME = re.compile(r'^(?P<base>.+)/k(?P<k>\d+)$')


def _figure(width: float, height: float):
  """A figure drawn by the Agg canvas (headless; matplotlib imported here)."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('plotting needs matplotlib: pip install matplotlib',
                      name='matplotlib') from e
  # Constrained layout keeps long tick labels inside the fixed-size canvas.
  return Figure(figsize=(width, height), dpi=DPI, layout='constrained')


# ---------------------------------------------------------------------------
# Training curves of one run.


def _read_events(workdir: str) -> list[dict]:
  """The train and test events of ``WORKDIR/metrics.jsonl``.

  Same reading as a resuming run (``metrics.read_jsonl``): a torn last line
  is dropped, damage anywhere else is an error.

  Raises:
    InputError: no such file, no events in it, or a damaged line.
  """
  path = run_files.path(workdir, run_files.METRICS_FILE)
  if not filesystem.resolve(path).exists():
    raise InputError(f'{path} not found: pass a run\'s workdir (the folder '
                     'of its metrics.jsonl)')
  if not filesystem.resolve(path).is_file():
    raise InputError(f'{path} is not a file: move it away')
  events = [e for e in metrics.read_jsonl(workdir)
            if e.get('split') in ('train', 'test') and 'epoch' in e]
  if not events:
    raise InputError(f'{path} has no events yet (a run writes its first one '
                     'after log_every_steps steps): nothing to plot')
  return events


def _series(events, key):
  """``(epochs, values)`` of the events that carry `key`, in file order."""
  points = [(e['epoch'], e[key]) for e in events if key in e]
  return [p[0] for p in points], [p[1] for p in points]


def _once_per_step(events):
  """The first event of every (split, step): speed and learning rate are
  the same for all heads of a step, so each is drawn once."""
  seen, kept = set(), []
  for event in events:
    if (event['split'], event['step']) not in seen:
      seen.add((event['split'], event['step']))
      kept.append(event)
  return kept


def _title(workdir: str) -> str:
  try:
    config = run_files.read_config(workdir) or {}
  except InputError:
    config = {}  # The title is cosmetic: the curves need metrics.jsonl only.
  experiment = config.get('experiment') if isinstance(config, dict) else None
  name = paper.describe(experiment) if experiment else ''
  folder = filesystem.absolute(workdir)
  return f'{name} ({folder})' if name else folder


def training_curves(workdir: str):
  """One run's ``metrics.jsonl`` as curves against epochs.

  A row per head (``rotation``, ``classifier``, the evaluated blocks or a
  PASCAL VOC task), in the order the file first names them: loss and the
  head's metric (accuracy; mAP or mIoU for VOC), train and test.
  A last row: images/s (train steps, and evaluation) and, when the train
  events carry ``learning_rate``, the learning rate (else no such panel).
  The plotted points are the file's numbers (accuracy as a fraction).

  Args:
    workdir: the run's folder.

  Returns:
    A ``matplotlib.figure.Figure`` of ``CURVES_WIDTH`` by
    ``CURVES_ROW_HEIGHT`` x (heads + 1) inches at ``DPI``.

  Raises:
    InputError: no ``metrics.jsonl``, no events in it, or a damaged one.
  """
  events = _read_events(workdir)
  heads = list(dict.fromkeys(e.get('head', _NO_HEAD) for e in events))
  fig = _figure(CURVES_WIDTH, CURVES_ROW_HEIGHT * (len(heads) + 1))
  axes = fig.subplots(len(heads) + 1, 2, squeeze=False, sharex=True)
  styles = {'train': dict(color='C0', linewidth=1),
            'test': dict(color='C1', marker='o', markersize=3)}
  for row, head in enumerate(heads):
    of_head = [e for e in events if e.get('head', _NO_HEAD) == head]
    # The head's own metric: accuracy, or a PASCAL VOC head's mAP / mIoU.
    metric = next((m for m in metrics.HEADLINE_METRICS
                   if any(m in e for e in of_head)), 'accuracy')
    for column, key in enumerate(('loss', metric)):
      ax = axes[row, column]
      for split in ('train', 'test'):
        x, y = _series([e for e in of_head if e['split'] == split], key)
        if x:
          ax.plot(x, y, label=split, **styles[split])
      ax.set_title(f'{head}: {key}')
      ax.set_ylabel(key)
      ax.grid(alpha=0.3)
      if ax.get_lines():  # A head whose events lack the key: no legend.
        ax.legend(loc='best', fontsize='small')
  once = _once_per_step(events)
  ax = axes[-1, 0]
  for split, label in (('train', 'train steps'), ('test', 'evaluation')):
    x, y = _series([e for e in once if e['split'] == split], 'images_per_sec')
    if x:
      ax.plot(x, y, label=label, **styles[split])
  ax.set_title('images/s')
  ax.set_ylabel('images/s')
  ax.grid(alpha=0.3)
  ax.legend(loc='best', fontsize='small')
  x, y = _series([e for e in once if e['split'] == 'train'], 'learning_rate')
  if x:
    ax = axes[-1, 1]
    ax.plot(x, y, label='train', **styles['train'])
    ax.set_title('learning rate')
    ax.set_ylabel('learning rate')
    if min(y) > 0:  # Log scale: every step of a x0.2 table shows.
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
  else:  # Runs from before learning_rate was logged: no empty panel.
    fig.delaxes(axes[-1, 1])
    # sharex hid the x tick labels of the panel above the deleted one.
    axes[-2, 1].tick_params(labelbottom=True)
    axes[-2, 1].set_xlabel('epoch')
  for ax in axes[-1]:
    ax.set_xlabel('epoch')
  fig.suptitle(_title(workdir))
  return fig


# ---------------------------------------------------------------------------
# A reproduce root: our numbers against the paper's.


def _finished_rows(root: str) -> list[dict]:
  """The (run, head) rows of every finished run under `root`.

  Raises:
    InputError: `root` holds no ``results.json`` of a finished run.
  """
  if not filesystem.resolve(root).is_dir():
    raise InputError(f'{root} is not a folder: pass the --root of '
                     'rotnet_jax.reproduce')
  skipped = []
  rows = report.collect(root, skipped)
  for path, reason in skipped:
    logging.warning('Skipped %s: %s', path, reason)
  finished = [r for r in rows if r['complete']]
  if not finished:
    raise InputError(
        f'{root} holds no finished run ({len(rows)} unfinished result rows, '
        f'{len(skipped)} unreadable results.json): nothing to plot; let '
        'rotnet_jax.reproduce finish a job first')
  if len(finished) < len(rows):
    logging.warning('Left out %d rows of unfinished runs under %s.',
                    len(rows) - len(finished), root)
  return finished


def _group(rows):
  """Rows averaged as ``report.markdown_table`` averages them: one group
  per (experiment, head) and setting (dataset, width, epochs, BatchNorm
  statistics of a random backbone), i.e. the seeds of one setting."""
  groups = collections.defaultdict(list)
  for row in rows:
    groups[(row['experiment'], row['head'], row['dataset'], row['width'],
            row['epochs'], row['random_batch_stats'])].append(row)
  return groups


def _mean_std(runs) -> tuple[float, float]:
  """Mean final accuracy (%) and sample std (NaN for one run: no bar)."""
  finals = [r['final'] for r in runs]
  std = float(np.std(finals, ddof=1)) if len(finals) > 1 else math.nan
  return float(np.mean(finals)), std


def _setting(key) -> str:
  """Dataset, width, epochs (a random backbone's BatchNorm statistics are
  in its bar's label already)."""
  _, _, dataset, width, epochs, _ = key
  return f'{dataset}, width {width:g}, {epochs} epochs'


def _settings(keys) -> str:
  """The settings of several groups in one short line."""
  def values(index, fmt=str):
    # key=str: a results.json without num_epochs gives None among ints.
    return ', '.join(fmt(v) for v in sorted({k[index] for k in keys},
                                            key=str))
  return (f'{values(2)}; width {values(3, "{:g}".format)}; '
          f'{values(4)} epochs')


def _protocol(key) -> bool:
  """Whether a group ran the paper's protocol (as the report decides)."""
  experiment, _, dataset, width, epochs, _ = key
  return (paper.comparable(dataset, experiment) and width == 1.0 and
          epochs == paper.protocol_epochs(experiment))


def _several_settings(groups) -> bool:
  """Whether a row (experiment, head) has groups of several settings: their
  labels then name the setting to tell them apart."""
  rows = collections.Counter(key[:2] for key in groups)
  return any(count > 1 for count in rows.values())


def _table_of(experiment: str) -> str:
  table = experiment.split('/', 1)[0]
  return table if table in TABLES else 'other'


def _is_semi(experiment: str) -> bool:
  match = _SEMI_NAME.match(experiment)
  return bool(match) and match.group('base') in SEMI_EXPERIMENTS


def _order(key):
  """Paper order: the experiments as ``paper.DESCRIPTIONS`` lists them."""
  known = list(paper.DESCRIPTIONS)
  rank = known.index(key[0]) if key[0] in known else len(known)
  return (rank, key[0], key[1], str(key[2:]))


def _bar_panel(ax, table, groups, keys, show_setting):
  """Paper and ours side by side for each group of one table."""
  x_paper, h_paper, x_ours, h_ours, err_ours, labels = [], [], [], [], [], []
  paper_labels = []
  for x, key in enumerate(keys):
    reference = paper.paper_accuracy(key[0], key[1])
    mean, std = _mean_std(groups[key])
    if reference is None:  # Ours alone, centred on its tick.
      x_ours.append(x)
    else:
      x_paper.append(x - 0.2)
      h_paper.append(reference)
      # Starred as the report stars them: no source confirms the number.
      unconfirmed = not paper.confirmed(key[0], key[1])
      paper_labels.append(f'{reference:.2f}{"*" if unconfirmed else ""}')
      x_ours.append(x + 0.2)
    h_ours.append(mean)
    err_ours.append(std)
    runs = len(groups[key])
    label = f'{paper.describe(key[0])}\n{key[1]} ({runs} run' \
            f'{"s" if runs > 1 else ""})'
    if key[5]:  # A random backbone: whose BatchNorm statistics (as report).
      label += f'\nBN statistics: {key[5]}'
    if show_setting:
      label += '\n' + _setting(key)
    labels.append(label)
  if x_paper:
    marked = any(label.endswith('*') for label in paper_labels)
    bars = ax.bar(x_paper, h_paper, width=0.4, color='0.6',
                  label=UNCONFIRMED_LABEL if marked else 'paper')
    ax.bar_label(bars, paper_labels, fontsize='x-small')
  bars = ax.bar(x_ours, h_ours, width=0.4, color='C0', yerr=err_ours,
                capsize=3, label='ours (final epoch; mean ± std of seeds)')
  ax.bar_label(bars, fmt='%.2f', fontsize='x-small')
  ax.set_xticks(range(len(keys)), labels, rotation=30, ha='right',
                fontsize='x-small')
  # At least 4 slots wide: a lone bar is not drawn across the whole panel.
  ax.set_xlim(-0.6, max(len(keys), 4) - 0.4)
  # Room above 100 % for the legend, clear of the bars.
  ax.set_ylim(0, 118)
  ax.set_yticks(range(0, 101, 20))
  ax.set_ylabel(_SCORES.get(table, 'test accuracy (%)'))
  title = _TABLE_TITLES[table]
  off_protocol = [k for k in keys if not _protocol(k)]
  if off_protocol:  # Say so where the bars cannot be compared.
    title += '\nours not the paper\'s protocol: ' + _settings(off_protocol)
  ax.set_title(title, fontsize='medium')
  ax.grid(axis='y', alpha=0.3)
  ax.legend(loc='upper center', ncols=2, fontsize='small')


def _comparison_figure(rows, root: str):
  groups = _group(r for r in rows if not _is_semi(r['experiment']))
  if not groups:
    raise InputError(f'{root} holds only semi-supervised runs: plot them '
                     'with semi_supervised (semi_supervised.png)')
  panels = collections.defaultdict(list)
  for key in sorted(groups, key=_order):
    panels[_table_of(key[0])].append(key)
  names = [t for t in TABLES + ('other',) if t in panels]
  show_setting = _several_settings(groups)
  fig = _figure(COMPARISON_WIDTH, COMPARISON_PANEL_HEIGHT * len(names))
  axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
  for ax, table in zip(axes, names):
    _bar_panel(ax, table, groups, panels[table], show_setting)
  scores = ('Test accuracy, mAP and mIoU' if 'table7' in names
            else 'Test accuracy')
  fig.suptitle(f'{scores}: the paper and ours ({root})')
  return fig


def paper_comparison(root: str):
  """The paper's numbers and ours, a grouped bar chart per table.

  One panel per table with finished runs (``table1`` .. ``table7``, then
  the experiments outside them: pretext, variants, smoke), one group per
  (experiment, block) and setting. Its bars: the paper's number (grey;
  starred where no source confirms it; left out where ``paper.py`` has
  none) and ours,
  the final-epoch test accuracy in % (Table 7: PASCAL VOC's mAP and mIoU),
  mean over seeds with the sample std as error bar when there are
  several. Semi-supervised runs are
  :func:`semi_supervised`'s. Unfinished runs are left out.

  Args:
    root: a folder of ``results.json`` files (``reproduce --root``).

  Returns:
    A ``matplotlib.figure.Figure`` of ``COMPARISON_WIDTH`` by
    ``COMPARISON_PANEL_HEIGHT`` x panels inches at ``DPI``.

  Raises:
    InputError: no finished run under `root`, or only semi-supervised ones.
  """
  return _comparison_figure(_finished_rows(root), root)


def _semi_figure(rows, root: str):
  groups = collections.defaultdict(list)
  for row in rows:
    match = _SEMI_NAME.match(row['experiment'])
    if match and match.group('base') in SEMI_EXPERIMENTS:
      key = (match.group('base'), row['head'], row['dataset'], row['width'],
             row['epochs'], row['random_batch_stats'])
      groups[key].append((int(match.group('k')), row))
  if not groups:
    raise InputError(f'{root} holds no finished semi-supervised run '
                     f'({", ".join(e + "/k*" for e in SEMI_EXPERIMENTS)}): '
                     'run python -m rotnet_jax.reproduce semi first')
  fig = _figure(*SEMI_SIZE)
  ax = fig.subplots()
  show_setting = _several_settings(groups)
  markers = {SEMI_EXPERIMENTS[0]: 'o', SEMI_EXPERIMENTS[1]: 's'}
  ks = set()
  for key in sorted(groups, key=lambda k: (SEMI_EXPERIMENTS.index(k[0]),
                                           str(k[1:]))):
    by_k = collections.defaultdict(list)
    for k, row in groups[key]:
      by_k[k].append(row)
    x = sorted(by_k)
    stats = [_mean_std(by_k[k]) for k in x]
    ks.update(x)
    label = paper.DESCRIPTIONS[key[0]].removeprefix('Semi-supervised: ')
    label += f' ({key[1]})'
    if show_setting:
      label += f'\n{_setting(key)}'
    line, = ax.plot(x, [s[0] for s in stats], marker=markers[key[0]],
                    label=label)
    # Error bars apart from the line, so the line's data is the means alone.
    ax.errorbar(x, [s[0] for s in stats], yerr=[s[1] for s in stats],
                fmt='none', ecolor=line.get_color(), capsize=3)
  ax.set_xscale('log')
  ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
  ax.minorticks_off()
  ax.set_xlabel('labelled training images per class (K)')
  ax.set_ylabel('test accuracy (%, final epoch)')
  ax.set_title('Semi-supervised: RotNet + conv vs supervised NIN-3\n'
               f'({_settings(list(groups))})', fontsize='medium')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  return fig


def semi_supervised(root: str):
  """Accuracy against K for the ``semi`` table, as in the paper's figure.

  Two lines with markers, ``semi/rotnet_conv`` and ``semi/supervised_nin3``
  (one per setting if the root mixes settings): final-epoch test accuracy
  in %, mean over seeds (error bars: sample std), against K on a log axis.

  Args:
    root: a folder of ``results.json`` files (``reproduce --root``).

  Returns:
    A ``matplotlib.figure.Figure`` of ``SEMI_SIZE`` inches at ``DPI``.

  Raises:
    InputError: no finished run under `root`, or no semi-supervised one.
  """
  return _semi_figure(_finished_rows(root), root)


# ---------------------------------------------------------------------------
# A detection run: average precision per class, detections on test images.


def _read_config(workdir: str) -> dict:
  """``config.json`` as a dict ({} if there is none or it is not one)."""
  config = run_files.read_config(workdir)
  return config if isinstance(config, dict) else {}


def is_detection_run(workdir: str) -> bool:
  """Whether `workdir` is a PASCAL VOC detection run: its ``config.json``
  says ``transfer_task='voc_detection'`` (with ``mode='transfer'``), or
  its ``results.json`` has a ``voc_detection`` head."""
  try:
    config = _read_config(workdir)
    if (config.get('mode') == 'transfer' and
        config.get('transfer_task') == DETECTION_HEAD):
      return True
    results = run_files.read_results(workdir)
  except InputError:  # Damaged files: not recognisably a detection run.
    return False
  heads = results.get('heads') if isinstance(results, dict) else None
  return isinstance(heads, list) and any(
      isinstance(h, dict) and h.get('head') == DETECTION_HEAD for h in heads)


def _last_detection_test(events) -> dict | None:
  """The last test event of the detection head that has its mAP."""
  tests = [e for e in events if e['split'] == 'test' and
           e.get('head') == DETECTION_HEAD and 'mAP' in e]
  return tests[-1] if tests else None


def _ap(event: dict, name: str) -> float:
  """``AP_<name>`` of a test event as a float; NaN when absent or NaN (a
  class without ground truth in the split)."""
  value = event.get(f'AP_{name}')
  try:
    return math.nan if value is None else float(value)
  except (TypeError, ValueError):
    return math.nan


def detection_ap(workdir: str):
  """A detection run's average precision per class at its last test.

  One bar per VOC class (``voc.CLASSES`` order), its height the last test
  event's ``AP_<class>`` times 100 (VOC07 11-point AP, %); a class whose
  AP is NaN (no ground truth in the split) has no bar, only ``n/a`` on the
  axis. A dashed line and the title give the event's ``mAP`` (%).

  Args:
    workdir: a detection run's folder (its ``metrics.jsonl``).

  Returns:
    A ``matplotlib.figure.Figure`` of ``DETECTION_AP_SIZE`` inches at
    ``DPI``.

  Raises:
    InputError: no ``metrics.jsonl`` or no events in it (as
      :func:`training_curves`), or no test event of the
      ``voc_detection`` head yet.
  """
  event = _last_detection_test(_read_events(workdir))
  if event is None:
    path = run_files.path(workdir, run_files.METRICS_FILE)
    raise InputError(f'{path} has no test event of the {DETECTION_HEAD} '
                     'head yet (a run tests every eval_every_epochs): no '
                     'average precision to plot')
  aps = [_ap(event, name) for name in voc.CLASSES]
  present = [k for k, ap in enumerate(aps) if not math.isnan(ap)]
  fig = _figure(*DETECTION_AP_SIZE)
  ax = fig.subplots()
  bars = ax.bar(present, [100 * aps[k] for k in present], color='C0',
                label='AP of the class')
  ax.bar_label(bars, fmt='%.1f', fontsize='x-small')
  for k, ap in enumerate(aps):
    if math.isnan(ap):  # No bar: the split has no object of the class.
      ax.text(k, 1, 'n/a', ha='center', va='bottom', fontsize='x-small',
              color='0.4')
  mean_ap = 100 * float(event['mAP'])
  ax.axhline(mean_ap, color='C1', linestyle='--',
             label=f'mAP {mean_ap:.2f}')
  ax.set_xticks(range(len(voc.CLASSES)), voc.CLASSES, rotation=45,
                ha='right')
  ax.set_xlim(-0.6, len(voc.CLASSES) - 0.4)
  ax.set_ylim(0, 110)
  ax.set_yticks(range(0, 101, 20))
  ax.set_ylabel('average precision (%, VOC07 11-point)')
  ax.grid(axis='y', alpha=0.3)
  ax.legend(loc='upper right', fontsize='small')
  split = _read_config(workdir).get('test_split', 'test')
  ax.set_title(f'{_title(workdir)}\n{split}, epoch {event["epoch"]}: '
               f'mAP {mean_ap:.2f} %', fontsize='medium')
  return fig


@dataclasses.dataclass(frozen=True)
class Detection:
  """One line of a devkit results file.

  Attributes:
    image_id: the image's id.
    label: the class's index in ``voc.CLASSES``.
    score: the detector's score.
    box: ``(x1, y1, x2, y2)``, 0-based, inclusive (the file's 1-based
      pixels minus 1, as ``voc.DetectionSplit.boxes``).
  """
  image_id: str
  label: int
  score: float
  box: tuple[float, float, float, float]


def detections_folder(workdir: str) -> str:
  """``WORKDIR/detections``, where a detection run writes its results."""
  return run_files.path(workdir, run_files.DETECTIONS_DIR)


def read_detections(workdir: str, split: str, image_ids
                    ) -> dict[str, list[Detection]]:
  """The detections of `image_ids` in the devkit results files of `split`
  (``WORKDIR/detections/comp4_det_<split>_<class>.txt``).

  Lines of other images are skipped unparsed (a whole test split's files
  hold millions of lines). A class's missing file holds no detections.

  Returns:
    For each of `image_ids`, its detections in file order (classes in
    ``voc.CLASSES`` order).

  Raises:
    InputError: no detections folder, none of the files of `split` in it,
      or a line of a wanted image that is not ``<image id> <score> <xmin>
      <ymin> <xmax> <ymax>`` with finite numbers (naming file and line).
  """
  folder = detections_folder(workdir)
  if not filesystem.resolve(folder).is_dir():
    raise InputError(f'{folder} not found: a detection run writes its '
                     'detections there at each test (pass a detection '
                     'run\'s workdir, after its first test)')
  wanted = {str(i): [] for i in image_ids}
  found = 0
  for label, name in enumerate(voc.CLASSES):
    path = filesystem.join(folder, f'comp4_det_{split}_{name}.txt')
    if not filesystem.resolve(path).is_file():
      continue
    found += 1
    lines = filesystem.resolve(path).read_text().split('\n')
    for number, line in enumerate(lines, 1):
      image_id = line.split(' ', 1)[0].strip()
      if image_id not in wanted:
        continue
      parts = line.split()
      try:
        values = [float(v) for v in parts[1:]]
        if len(values) != 5 or not all(map(math.isfinite, values)):
          raise ValueError
      except ValueError as e:
        raise InputError(
            f'{path} line {number}: {line.strip()!r} is not "<image id> '
            '<score> <xmin> <ymin> <xmax> <ymax>" (finite numbers)') from e
      wanted[image_id].append(Detection(
          image_id, label, values[0], tuple(v - 1 for v in values[1:])))
  if not found:
    raise InputError(f'{folder} has no comp4_det_{split}_<class>.txt file: '
                     f'not the detections of split {split!r} (see '
                     'config.json\'s test_split)')
  return wanted


def select_detections(found, *, score: float = DETECTION_SCORE,
                      max_boxes: int = DETECTION_MAX_BOXES,
                      fallback: int = DETECTION_FALLBACK_BOXES
                      ) -> list[Detection]:
  """The detections of one image to draw, best first: those scoring at
  least `score`, at most `max_boxes`; if none does, the best `fallback`.
  """
  ranked = sorted(found, key=lambda d: -d.score)  # Stable: file order.
  kept = [d for d in ranked if d.score >= score][:max_boxes]
  return kept or ranked[:fallback]


def _class_colour(label: int):
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  return colormaps['tab20'](label % 20)


def _rectangle(box, **kwargs):
  """A box of 0-based inclusive pixel indices, drawn around its pixels
  (``imshow`` centres pixel i on i)."""
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.patches import Rectangle
  x1, y1, x2, y2 = box
  return Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1,
                   fill=False, **kwargs)


def detections(workdir: str, num_images: int = DETECTION_IMAGES, *,
               score: float = DETECTION_SCORE,
               max_boxes: int = DETECTION_MAX_BOXES,
               fallback: int = DETECTION_FALLBACK_BOXES):
  """A detection run's detections on the first test images.

  The images are the first `num_images` of the test split
  (``config.json``'s ``test_split``) in its split file's order, read from
  ``config.json``'s ``dataset`` (a VOCdevkit or VOC2007 folder), one panel
  each. Drawn: the detections of :func:`select_detections` from the
  results files (:func:`read_detections`), solid in their class's colour
  with ``<class> <score>`` (gid ``detection`` and ``detection_label``),
  and the ground-truth boxes of the devkit's XML, dashed white with their
  class (gid ``ground_truth``; ``difficult`` ones say so).

  Args:
    workdir: a detection run's folder.
    num_images: panels (fewer if the split is smaller).
    score, max_boxes, fallback: as :func:`select_detections`.

  Returns:
    A ``matplotlib.figure.Figure``, ``DETECTION_PANEL_SIZE`` inches per
    panel (two columns) at ``DPI``.

  Raises:
    InputError: no ``config.json`` or one without ``dataset``, no
      detections (:func:`read_detections`), or a dataset that cannot be
      opened (``voc.open_detection``: the folder is named).
  """
  if num_images < 1:
    raise InputError(f'num_images={num_images}: draw at least 1 image')
  config = _read_config(workdir)
  if not config.get('dataset'):
    raise InputError(f'{run_files.path(workdir, run_files.CONFIG_FILE)} '
                     'is missing or names no dataset: the detections '
                     'cannot be drawn on their images')
  split = str(config.get('test_split') or 'test')
  folder = detections_folder(workdir)
  if not filesystem.resolve(folder).is_dir():  # Before opening the data.
    read_detections(workdir, split, ())
  opened = voc.open_detection(str(config['dataset']), split)
  count = min(num_images, len(opened))
  found = read_detections(workdir, split, opened.ids[:count])
  columns = min(count, 2)
  rows = math.ceil(count / columns)
  fig = _figure(DETECTION_PANEL_SIZE[0] * columns,
                DETECTION_PANEL_SIZE[1] * rows)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for index, ax in enumerate(axes):
    if index >= count:
      fig.delaxes(ax)
      continue
    image_id = opened.ids[index]
    with Image.open(opened.paths[index]) as image:
      ax.imshow(np.asarray(image.convert('RGB')))
    for box, label, difficult in zip(opened.boxes[index],
                                     opened.labels[index],
                                     opened.difficult[index]):
      ax.add_patch(_rectangle(box, edgecolor='white', linestyle='--',
                              linewidth=1.2, gid='ground_truth'))
      name = voc.CLASSES[int(label)] + (' (difficult)' if difficult else '')
      ax.text(box[0], box[3], name, color='white', fontsize='x-small',
              va='top', gid='ground_truth_label')
    drawn = select_detections(found[image_id], score=score,
                              max_boxes=max_boxes, fallback=fallback)
    for detection in drawn:
      colour = _class_colour(detection.label)
      ax.add_patch(_rectangle(detection.box, edgecolor=colour, linewidth=2,
                              gid='detection'))
      ax.text(detection.box[0], detection.box[1],
              f'{voc.CLASSES[detection.label]} {detection.score:.2f}',
              fontsize='x-small', va='bottom', gid='detection_label',
              bbox=dict(facecolor=colour, alpha=0.7, pad=1,
                        linewidth=0))
    passed = sum(d.score >= score for d in drawn)
    shown = (f'{len(drawn)} of {len(found[image_id])} detections (score '
             f'>= {score:g})' if passed or not drawn else
             f'none scores >= {score:g}: the best {len(drawn)}')
    ax.set_title(f'{image_id}: {shown}', fontsize='small')
    ax.set_axis_off()
  fig.suptitle(f'{_title(workdir)}\n{split}: solid, detections; dashed, '
               'ground truth', fontsize='medium')
  return fig


# ---------------------------------------------------------------------------
# Files.


def save(fig, path: str) -> str:
  """Writes `fig` as a PNG to `path` atomically; returns the absolute path.

  The picture is written to a temporary name in the same folder and renamed
  (uploaded as one object to a ``gs://`` folder), so a reader (a browser
  refreshing during a run) never sees half a file.
  """
  path = filesystem.absolute(path)

  def write(tmp):
    with open(tmp, 'wb') as f:
      fig.savefig(f, format='png', dpi=fig.dpi)

  filesystem.write_file_atomically(path, write)
  return path


def _has_results(root: str) -> bool:
  return any(run_files.RESULTS_FILE in files
             for _, _, files in filesystem.resolve(root).walk())


def plot_path(path: str, out_dir: str | None = None, *,
              detection_images: int = DETECTION_IMAGES) -> list[str]:
  """Plots what `path` holds into `out_dir`; returns the files written.

  * a run's workdir (it has ``metrics.jsonl``): ``curves.png``; a
    detection run's (:func:`is_detection_run`) that has tested once also
    ``detection_ap.png`` (:func:`detection_ap`) and ``detections.png``
    (:func:`detections` on `detection_images` test images);
  * a ``reproduce`` root (``results.json`` files under it):
    ``paper_comparison.png`` (unless it holds only semi-supervised runs)
    and, when it has semi-supervised runs, ``semi_supervised.png``.

  Every figure is drawn before anything is written, so bad input leaves
  `out_dir` untouched. Existing pictures of the same names are replaced.

  Args:
    path: a workdir or a reproduce root.
    out_dir: where the pictures go (created if need be); default `path`.

  Raises:
    InputError: `path` is neither (naming it), its files cannot be plotted
      (an empty or damaged ``metrics.jsonl``, no finished run; a tested
      detection run without its detections folder or dataset), or
      `out_dir` cannot be written (checked first; a full disk while
      writing).
  """
  out_dir = path if out_dir is None else out_dir
  if not filesystem.resolve(path).is_dir():
    raise InputError(f'{path} is not a folder: pass a run\'s workdir or the '
                     '--root of rotnet_jax.reproduce')
  filesystem.check_writable_folder(out_dir, '--out')
  figures = []
  if filesystem.resolve(run_files.path(path, run_files.METRICS_FILE)).exists():
    figures.append((CURVES_FILE, training_curves(path)))
    if is_detection_run(path):
      if _last_detection_test(_read_events(path)) is None:
        logging.info('%s has not tested yet: no detection pictures.', path)
      else:
        figures.append((DETECTION_AP_FILE, detection_ap(path)))
        figures.append((DETECTIONS_FILE,
                        detections(path, detection_images)))
  elif _has_results(path):
    rows = _finished_rows(path)
    if any(not _is_semi(r['experiment']) for r in rows):
      figures.append((PAPER_COMPARISON_FILE, _comparison_figure(rows, path)))
    if any(_is_semi(r['experiment']) for r in rows):
      figures.append((SEMI_SUPERVISED_FILE, _semi_figure(rows, path)))
  else:
    raise InputError(f'{path} holds no metrics.jsonl and no results.json '
                     'under it: pass a run\'s workdir or the --root of '
                     'rotnet_jax.reproduce')
  try:
    filesystem.resolve(out_dir).mkdir(parents=True, exist_ok=True)
    return [save(fig, filesystem.join(out_dir, name)) for name, fig in figures]
  except OSError as e:  # What check_writable_folder cannot foresee: a full
    # disk, a folder that refuses new entries (/proc), a race.
    raise InputError(f'--out={out_dir!r} cannot be written: '
                     f'{e.strerror or e}') from e
