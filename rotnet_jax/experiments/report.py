"""Prints our results next to the paper's, as a Markdown table.

    python -m rotnet_jax.report /tmp/rotnet_repro

Reads every ``results.json`` under the folder (one per run, written by
training and evaluation). Rows are (experiment, block); runs of several
seeds are averaged (mean ± standard deviation). "Ours" is the test score
after the last epoch, in %: the head's ``metric`` (accuracy; PASCAL VOC's
mAP for classification and detection, ``final_test_mAP`` of the
``voc_classification`` / ``voc_detection`` head, and mIoU for segmentation,
which the experiment's name says); the best epoch's score is shown apart,
labelled as selected on the test set (what the official code reported).
Only runs of the paper's protocol (the paper's dataset, full width, the
protocol's epochs) get a difference to the paper; others say why not. The
dataset check is per row (``paper.comparable``): CIFAR-10 rows accept
anything but the bundled digits, ImageNet rows ``imagenet2012`` or a
folder, Places rows only a folder (Places205; TFDS ``places365_small`` is
another dataset), PASCAL VOC classification ``voc/2007`` or a folder,
detection and segmentation only a folder. Once a table of the paper has a
result of ours, each of its rows with a paper number and no result yet is
listed as not run yet. A paper number that no source confirms is starred
(``paper.confirmed``). Runs that wrote an experiment name of the old table
numbering (``table4/rotnet_alexnet/linear``,
``table5/rotnet_alexnet/places_linear``) are reported under today's
(``paper.canonical``).

:func:`paper_tables` prints the paper's own tables, every row (other
methods', supervised and random baselines', PASCAL VOC's) with the
sources it was read from.
"""

import collections
import os

import numpy as np

from rotnet_jax.errors import InputError
from rotnet_jax.experiments import paper
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files


# The "ours" cell of a paper row of ours that has no result yet.
NOT_RUN = 'not run yet'
UNCONFIRMED_NOTE = ('\\* no source the project could read confirms this '
                    'number of the paper (arXiv:1803.07728); see '
                    'rotnet_jax/experiments/paper.py.')


def _data(results: dict) -> str:
  """A run's data and the pipeline that read it (a PASCAL VOC run's is
  always its own, whatever ``pipeline`` says)."""
  if results.get('mode') == 'transfer':
    return str(results.get('dataset'))
  return f"{results.get('dataset')} ({results.get('pipeline')})"


def _rows(results: dict, experiment: str) -> list[dict]:
  """The (run, head) rows of one ``results.json``; KeyError/TypeError/
  ValueError if it lacks what a report needs."""
  rows = []
  for head in results['heads']:
    # Written since PASCAL VOC's mAP and mIoU; before, always accuracy.
    metric = str(head.get('metric', 'accuracy'))
    rows.append(dict(
        experiment=experiment, head=str(head['head']), metric=metric,
        final=100 * float(head[f'final_test_{metric}']),
        best=100 * float(head[f'best_test_{metric}_test_selected']),
        best_epoch=int(head['best_epoch_test_selected']),
        complete=bool(results.get('complete', False)),
        epochs=results.get('num_epochs'),
        data=_data(results),
        dataset=results.get('dataset'),
        width=float(results.get('model_width', 1.0)),
        random_batch_stats=head.get('random_batch_stats')))
  if not rows:
    raise ValueError('no heads')
  return rows


def collect(root: str, skipped: list[tuple[str, str]] | None = None
            ) -> list[dict]:
  """Every (run, head) result under `root`, flattened.

  Args:
    root: the folder to search for ``results.json`` files.
    skipped: if given, ``(path, reason)`` of every ``results.json`` that
      cannot be read or lacks what a report needs is appended to it; such
      files are left out, the others reported.
  """
  rows = []
  for folder, _, files in sorted(
      (os.fspath(f), d, n) for f, d, n in filesystem.resolve(root).walk()):
    if run_files.RESULTS_FILE not in files:
      continue
    path = filesystem.join(folder, run_files.RESULTS_FILE)
    try:
      results = run_files.read_results(folder)
      # An old name (the AlexNet tables' numbering before it followed the
      # paper's) is today's row: old and new runs of a setting average.
      experiment = paper.canonical(
          results.get('experiment') or filesystem.relative(folder, root))
      rows.extend(_rows(results, experiment))
    except InputError:
      if skipped is not None:
        skipped.append((path, 'not valid JSON (cut short?)'))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      if skipped is not None:
        skipped.append((path, f'incomplete ({type(e).__name__}: {e})'))
  return rows


def _mean_std(values) -> str:
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}'


def _sort_key(key):
  experiment, head = key[:2]
  known = list(paper.DESCRIPTIONS)
  base = experiment.rpartition('/k')[0] if '/k' in experiment else experiment
  rank = known.index(base) if base in known else len(known)
  k = experiment.rpartition('/k')[2]
  return (experiment.startswith(('pretext', 'smoke/pretext')), rank, base,
          int(k) if k.isdigit() else 0, head, str(key[2:]))


def _difference(experiment, runs, finals, reference) -> str:
  """Ours minus the paper, only for runs of the paper's protocol."""
  if reference is None:
    return '—'
  run = runs[0]  # A group's runs share data, width and epochs.
  if not paper.comparable(run['dataset'], experiment):
    return f"n/a ({run['dataset']})"
  if run['width'] != 1.0 or run['epochs'] != paper.protocol_epochs(
      experiment):
    return 'n/a (not the protocol)'
  return f'{np.mean(finals) - reference:+.2f}'


def _paper_cell(experiment: str, head: str) -> tuple[str, bool]:
  """The paper's number of a row of ours as the table shows it, and
  whether it is starred (no source confirms it)."""
  reference = paper.paper_accuracy(experiment, head)
  if reference is None:
    return '—', False
  unconfirmed = not paper.confirmed(experiment, head)
  return f"{reference:.2f}{'*' if unconfirmed else ''}", unconfirmed


def not_run(rows: list[dict]) -> list[tuple[str, str]]:
  """``(experiment, head)`` of every paper row of ours with a number and
  no result in `rows`, in the paper's tables that have a result in
  `rows` (a table not started is left out)."""
  done = {(row['experiment'], row['head']) for row in rows}
  started = {row['experiment'] for row in rows}
  missing = []
  for table in paper.TABLES:
    ours = {name for row in table.rows for name in row.ours}
    if ours & started:
      missing += [key for key, value in paper.PAPER.items()
                  if key[0] in ours and value is not None and
                  key not in done]
  return missing


def markdown_table(rows: list[dict]) -> str:
  """One line per (experiment, head) and setting: paper, ours, difference.

  Runs average into one line only when they share dataset, width, epochs
  and (random backbones) BatchNorm-statistics protocol: seeds of one
  setting. A paper row of ours without a result, in a table that has
  some (:func:`not_run`), is a line saying so (:data:`NOT_RUN`).
  """
  groups = collections.defaultdict(list)
  for row in rows:
    groups[(row['experiment'], row['head'], row['dataset'], row['width'],
            row['epochs'], row['random_batch_stats'])].append(row)
  lines = [
      '| experiment | block | paper | ours (final epoch) | ours − paper | '
      'best epoch (test-selected) | runs | epochs | width | data |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  footnote = False
  for key in sorted(list(groups) + not_run(rows), key=_sort_key):
    paper_text, unconfirmed = _paper_cell(key[0], key[1])
    footnote = footnote or unconfirmed
    if key not in groups:
      lines.append(f'| {paper.describe(key[0])} | {key[1]} | {paper_text} | '
                   f'{NOT_RUN} | — | — | 0 | — | — | — |')
      continue
    runs = groups[key]
    finals = [r['final'] for r in runs]
    reference = paper.paper_accuracy(key[0], key[1])
    diff = _difference(key[0], runs, finals, reference)
    best = _mean_std([r['best'] for r in runs])
    epochs = sorted({r['best_epoch'] for r in runs})
    incomplete = sum(not r['complete'] for r in runs)
    name = paper.describe(key[0])
    protocols = sorted({r['random_batch_stats'] for r in runs
                        if r.get('random_batch_stats')})
    if protocols:  # A random backbone: say whose BatchNorm statistics.
      name += ' (BN statistics: ' + ', '.join(protocols) + ')'
    lines.append(
        f"| {name} | {key[1]} | {paper_text} | "
        f"{_mean_std(finals)} | {diff} | {best} (epoch "
        f"{', '.join(map(str, epochs))}) | {len(runs)}"
        f"{f' ({incomplete} unfinished)' if incomplete else ''} | "
        f"{key[4]} | {key[3]:g} | "
        f"{', '.join(sorted({r['data'] for r in runs}))} |")
  if footnote:
    lines += ['', UNCONFIRMED_NOTE]
  return '\n'.join(lines)


def _number(value: float | None, decimals: int, unconfirmed: bool) -> str:
  """A paper number with at least `decimals` decimals, more if it has
  them (70.87 among a table's 54.4s)."""
  if value is None:
    return '—'
  while round(value, decimals) != value and decimals < 4:
    decimals += 1
  return f"{value:.{decimals}f}{'*' if unconfirmed else ''}"


def paper_tables(names=None) -> str:
  """The paper's tables as Markdown: every row, ours to reproduce or not.

  Each table is titled with its number and what it measures; a row that
  experiments of ours reproduce names them (as :func:`markdown_table`
  does, and their ``experiment`` names; one per column in Table 7).
  Numbers have the decimals the paper prints; a number no source confirms
  is starred, with the footnote. The sources follow each table.

  Args:
    names: the tables to print (``table1``..``table7``); None: all.

  Raises:
    InputError: an unknown table name.
  """
  names = list(names or paper.TABLES_BY_NAME)
  unknown = [n for n in names if n not in paper.TABLES_BY_NAME]
  if unknown:
    raise InputError(f'unknown paper table(s) {unknown}; valid: '
                     f'{list(paper.TABLES_BY_NAME)}')
  out, footnote = [], False
  for name in names:
    table = paper.TABLES_BY_NAME[name]
    out += [f'Table {table.number}: {table.title}', '',
            '| method | ' + ' | '.join(table.columns) + ' | ours |',
            '| --- |' + ' --- |' * (len(table.columns) + 1)]
    for row in table.rows:
      unconfirmed = not paper.reference_confirmed(table, row)
      footnote = footnote or (unconfirmed and any(
          v is not None for v in row.values))
      ours = '; '.join(f'{paper.describe(name)} (`{name}`)'
                       for name in row.ours) or '—'
      decimals = table.decimals if row.decimals is None else row.decimals
      numbers = [_number(v, decimals, unconfirmed) for v in row.values]
      out.append(f"| {row.method} | {' | '.join(numbers)} | {ours} |")
    cited = list(table.sources) + [
        f'{s} ({row.method} row)' for row in table.rows for s in row.sources]
    out += ['', 'Sources: ' + ('; '.join(cited) if cited else
                               'none (see the footnote).'), '']
  if footnote:
    out.append(UNCONFIRMED_NOTE)
  return '\n'.join(out).rstrip()
