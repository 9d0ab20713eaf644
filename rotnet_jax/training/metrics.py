"""Metric sums, their summaries, and where they are written.

Steps return per-batch *sums* (``loss_sum``, ``correct``, ``count``), with
every sample weighted by its mask, so padded evaluation samples count for
nothing and averages are over samples, not batches. Sums from many steps
are added on the host (``np.asarray``), never with eager ops on sharded
arrays.

Outputs, from process 0 only:

* ``WORKDIR/metrics.jsonl``: one JSON object per event with ``step``,
  ``epoch``, ``split``, ``loss``, ``accuracy``, ``images_per_sec`` and any
  extra fields;
* TensorBoard event files in ``WORKDIR/tensorboard`` when ``tensorboardX``
  is installed, with the config as hyperparameters. tensorboardX was
  chosen because it is pure Python and needs no TensorFlow, so runs on the
  device-resident path (GPU machines without TensorFlow) write event files
  too. For a ``gs://`` workdir its event files go through ``etils.epath``
  (``run_files``), like every other file of a run, instead of
  tensorboardX's own google-cloud-storage writer;
* Weights & Biases, only when ``config.wandb_project`` is set (off by
  default; ``wandb`` is never required otherwise).
"""

import json
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.training import voc_metrics
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files


def weighted_sums(logits, labels, losses, weights) -> dict[str, jax.Array]:
  """A batch's weighted loss and correct-prediction sums, and weight total.

  Runs inside jit; `losses` are per-sample, `weights` the sample mask.
  """
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {'loss_sum': jnp.sum(losses * weights),
          'correct': jnp.sum(correct * weights), 'count': jnp.sum(weights)}


def summarize(step_sums: Iterable[Mapping[str, jax.Array]],
              ground_truth=None) -> dict[str, float]:
  """Adds per-step sums on the host; returns sample-weighted averages.

  Args:
    step_sums: dicts with ``loss_sum`` and ``count`` (sums over a batch,
      weighted by the sample mask), and what the head is scored by:
      ``correct`` (classes: accuracy), ``confusion`` (segmentation: an
      ``[C, C]`` pixel count, mean IoU), or per-sample ``scores`` and
      ``targets`` with their ``weights`` (multi-label: mean average
      precision over every sample of the split, which no sum gives), or
      each image's ``detection_boxes`` and ``detection_scores`` with its
      ``image_index`` and ``weights`` (detection: VOC07 average precision
      against `ground_truth`).
    ground_truth: per image of the split, ``(boxes, labels, difficult)``
      (``DetectionSource.ground_truth``); detection only.

  Returns:
    ``{'loss', 'count'}`` and the head's metrics: ``accuracy``, or
    ``mIoU`` and ``pixel_accuracy``, or ``mAP`` and ``mAP_11point``
    (classification), or ``mAP`` (11-point, VOC07's), ``mAP_all_points``
    and ``AP_<class>`` (detection, with ``detections``: per class the
    ``(image index, score, box)`` arrays scored) (see :func:`headline`);
    NaN when no sample was counted.
  """
  step_sums = jax.device_get(list(step_sums))
  total = {'loss_sum': 0.0, 'count': 0.0}
  for sums in step_sums:
    for key in total:
      total[key] += float(np.asarray(sums[key], np.float64))
  count = total['count']
  summary = {'loss': total['loss_sum'] / count if count else float('nan'),
             'count': int(count)}
  keys = step_sums[0].keys() if step_sums else {'correct'}
  if 'correct' in keys:
    correct = sum(float(np.asarray(s['correct'], np.float64))
                  for s in step_sums)
    summary['accuracy'] = correct / count if count else float('nan')
  if 'confusion' in keys:
    confusion = sum(np.asarray(s['confusion'], np.int64) for s in step_sums)
    scores = voc_metrics.mean_iou(confusion)
    summary.update(mIoU=float(scores['mIoU']),
                   pixel_accuracy=float(scores['pixel_accuracy']))
  if 'scores' in keys:
    kept = [np.asarray(s['weights']) > 0 for s in step_sums]
    scores = np.concatenate([np.asarray(s['scores'], np.float64)[k]
                             for s, k in zip(step_sums, kept)])
    targets = np.concatenate([np.asarray(s['targets'])[k]
                              for s, k in zip(step_sums, kept)])
    if len(scores):
      precision = voc_metrics.mean_average_precision(scores, targets)
      summary.update(mAP=float(precision['mAP']),
                     mAP_11point=float(precision['mAP_11point']))
    else:
      summary.update(mAP=float('nan'), mAP_11point=float('nan'))
  if 'detection_scores' in keys:
    summary.update(_detection_summary(step_sums, ground_truth))
  return summary


def _detection_summary(step_sums, ground_truth) -> dict[str, float]:
  """VOC07 detection AP of every kept detection of the split."""
  if ground_truth is None:
    raise ValueError('detection sums need the split\'s ground truth')
  per_class = [([], [], []) for _ in range(len(voc.CLASSES))]
  for sums in step_sums:
    kept = np.asarray(sums['weights']) > 0
    scores = np.asarray(sums['detection_scores'], np.float64)[kept]
    boxes = np.asarray(sums['detection_boxes'], np.float64)[kept]
    images = np.asarray(sums['image_index'])[kept]
    for image, image_scores, image_boxes in zip(images, scores, boxes):
      for label in range(len(voc.CLASSES)):
        detected = image_scores[label] >= 0  # -1: suppressed or padding.
        per_class[label][0].append(np.full(detected.sum(), image))
        per_class[label][1].append(image_scores[label][detected])
        per_class[label][2].append(image_boxes[label][detected])
  detections = [tuple(np.concatenate(parts) if parts else np.zeros(0)
                      for parts in lists) for lists in per_class]
  detections = [(images.astype(np.int64), scores, boxes.reshape(-1, 4))
                for images, scores, boxes in detections]
  precision = voc_metrics.detection_average_precision(detections,
                                                      ground_truth)
  summary = {'mAP': float(precision['mAP']),
             'mAP_all_points': float(precision['mAP_all_points'])}
  summary.update({f'AP_{name}': float(ap) for name, ap in
                  zip(voc.CLASSES, precision['AP'])})
  # Not a number: the loop writes them out (the devkit's files) and drops
  # them from the summary.
  summary['detections'] = detections
  return summary


# The metric a head is judged by, in order of precedence: the one its
# summary holds (a multi-label head's summary has no accuracy).
HEADLINE_METRICS = ('accuracy', 'mAP', 'mIoU')


def headline(summary: Mapping[str, float]) -> str | None:
  """The name of the metric `summary` is judged by (best epoch, results),
  or None for a summary of the loss alone (a multi-label head's training
  log: average precision needs the whole split)."""
  for name in HEADLINE_METRICS:
    if name in summary:
      return name
  return None


def format_duration(seconds: float) -> str:
  """``'1m15s'``, or ``'3h02m'`` from an hour on."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def parameter_overview(params) -> str:
  """A table of `params`: every array's path, shape and size, and the total.

  Logged at the start of every run, so a log says what was trained.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  rows = [('/'.join(str(getattr(k, 'key', k)) for k in path),
           'x'.join(map(str, np.shape(x))) or 'scalar', int(np.size(x)))
          for path, x in flat]
  total = sum(size for _, _, size in rows)
  rows.append(('total', f'{len(flat)} arrays', total))
  name_width = max(len(name) for name, _, _ in rows)
  shape_width = max(len(shape) for _, shape, _ in rows)
  return '\n'.join(f'{name:<{name_width}}  {shape:<{shape_width}}  '
                   f'{size:>12,}' for name, shape, size in rows)


def hyperparameters(run_config: Mapping[str, Any]) -> dict[str, Any]:
  """`run_config` (``config.json``'s content) flattened to dotted keys with
  values TensorBoard accepts (numbers, strings, booleans)."""
  flat = {}

  def visit(prefix, value):
    if isinstance(value, Mapping):
      for key, item in value.items():
        visit(f'{prefix}.{key}' if prefix else str(key), item)
    elif isinstance(value, (bool, int, float, str)):
      flat[prefix] = value
    else:  # Tuples, lists, None: as text.
      flat[prefix] = json.dumps(value)

  visit('', run_config)
  return flat


class MetricWriter:
  """Writes metric events to JSONL and, if available or asked for,
  TensorBoard and Weights & Biases."""

  def __init__(self, workdir: str, keep_up_to_step: int | None = None, *,
               run_config: Mapping[str, Any] | None = None,
               wandb_project: str | None = None):
    """Opens the metric files of `workdir` for appending.

    Args:
      workdir: the run's folder.
      keep_up_to_step: drop existing ``metrics.jsonl`` events after this
        step: a run resuming from an earlier checkpoint (after a crash)
        redoes those steps and logs them again.
      run_config: the resolved config, recorded as TensorBoard
        hyperparameters and as the W&B run's config.
      wandb_project: log to this Weights & Biases project too (None: no).
    """
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._remote_jsonl = None  # (URL, text so far) for a gs:// workdir.
    self._tensorboard = None
    self._wandb = None
    if not self._active:
      return
    filesystem.resolve(workdir).mkdir(parents=True, exist_ok=True)
    path = run_files.path(workdir, run_files.METRICS_FILE)
    if keep_up_to_step is not None and filesystem.resolve(path).exists():
      kept = [e for e in read_jsonl(workdir) if e['step'] <= keep_up_to_step]
      filesystem.write_text(path, ''.join(json.dumps(e) + '\n' for e in kept))
    if filesystem.is_remote(path):
      # An object store has no append (gcsfs would silently overwrite the
      # object): it is rewritten whole at every event from the text kept
      # here, as TensorFlow's GCS "append" does too. Fine for a file of a
      # few thousand short lines.
      self._remote_jsonl = (path, [filesystem.resolve(path).read_text()]
                            if filesystem.resolve(path).exists() else [])
    else:
      self._jsonl = open(path, 'a')  # pylint: disable=consider-using-with
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.info('tensorboardX not installed: no TensorBoard event files '
                   '(metrics.jsonl has everything).')
    else:
      logdir = run_files.path(workdir, run_files.TENSORBOARD_DIR)
      if filesystem.is_remote(logdir):
        _route_tensorboard_through_epath(logdir)
      self._tensorboard = SummaryWriter(logdir)
      if run_config is not None:
        self._write_hyperparameters(hyperparameters(run_config))
    if wandb_project:
      import wandb  # pylint: disable=g-import-not-at-top
      # One W&B run per workdir: a resumed run continues it.
      self._wandb = wandb.init(
          # W&B keeps its own files in a local folder; for a remote
          # workdir they go to its default (./wandb).
          project=wandb_project,
          dir=None if filesystem.is_remote(workdir) else run_files.path(
              workdir, ''),
          name=filesystem.resolve(workdir).name,
          id=_wandb_run_id(workdir), resume='allow',
          config=dict(run_config or {}))

  def _write_hyperparameters(self, values: dict[str, Any]) -> None:
    # SummaryWriter.add_hparams would start a second event file in a
    # sub-folder; the same three summaries go into this run's own file.
    from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top
    experiment, start, end = hparams(values, {})
    writer = self._tensorboard.file_writer
    for summary in (experiment, start, end):
      writer.add_summary(summary)

  def write(self, *, step: int, epoch: float, split: str,
            head: str | None = None, **values: float) -> None:
    """Records one event; `values` are scalars such as loss and accuracy.

    Args:
      step, epoch, split: where in training (``split`` is train or test).
      head: which classifier the values are for (runs training several).
      **values: the scalars.
    """
    if not self._active:
      return
    record = {'step': int(step), 'epoch': round(float(epoch), 4),
              'split': split}
    if head is not None:
      record['head'] = head
    record.update({k: float(v) for k, v in values.items()})
    line = json.dumps(record) + '\n'
    if self._remote_jsonl is not None:
      path, text = self._remote_jsonl
      text.append(line)
      filesystem.write_text(path, ''.join(text))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    if self._tensorboard is not None:
      prefix = f'{split}/{head}' if head else split
      for key, value in values.items():
        # A class's AP is NaN where the split has no such object: a
        # missing point, not a warning per event.
        if not (key.startswith('AP_') and np.isnan(value)):
          self._tensorboard.add_scalar(f'{prefix}/{key}', float(value),
                                       step)
      self._tensorboard.flush()
    if self._wandb is not None:
      prefix = f'{split}/{head}' if head else split
      self._wandb.log({f'{prefix}/{k}': float(v) for k, v in values.items()},
                      step=int(step))

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._wandb is not None:
      self._wandb.finish()


class _EpathEventFiles:
  """A tensorboardX writer factory that opens event files with epath.

  tensorboardX picks a factory by the URL's scheme; its own one for
  ``gs://`` needs google-cloud-storage and reaches the bucket directly.
  This one writes through ``run_files`` (etils.epath: TensorFlow's GCS
  file system, or gcsfs), the library every other file of a run uses.
  """

  def open(self, path: str):
    return filesystem.resolve(path).open('wb')

  def directory_check(self, path: str) -> None:
    filesystem.resolve(path).mkdir(parents=True, exist_ok=True)


def _route_tensorboard_through_epath(logdir: str) -> None:
  """Makes tensorboardX write ``logdir``'s scheme through epath."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  scheme = logdir.split('://', 1)[0]
  record_writer.register_writer_factory(scheme, _EpathEventFiles())


def _wandb_run_id(workdir: str) -> str:
  """A W&B run id that is the same for every run in `workdir`."""
  import hashlib  # pylint: disable=g-import-not-at-top
  return hashlib.sha1(run_files.path(workdir, '').encode()).hexdigest()[:16]


def check_metrics_file(workdir: str) -> None:
  """Raises InputError if ``metrics.jsonl`` exists and is damaged beyond a
  torn last line (read only: run before anything is written)."""
  if filesystem.resolve(run_files.path(workdir,
                                      run_files.METRICS_FILE)).exists():
    read_jsonl(workdir)


def read_jsonl(workdir: str) -> list[dict]:
  """All events of ``WORKDIR/metrics.jsonl``, in order.

  A torn last line (what a crash in the middle of a write leaves) is
  skipped with a warning; a line that cannot be read anywhere else means
  the file was damaged otherwise, and stops the run.

  Raises:
    InputError: a line before the last is not a JSON event.
  """
  path = run_files.path(workdir, run_files.METRICS_FILE)
  lines = [line for line in filesystem.resolve(path).read_text().split('\n')
           if line.strip()]
  events = []
  for number, line in enumerate(lines, 1):
    try:
      event = json.loads(line)
      if not isinstance(event, dict) or 'step' not in event:
        raise ValueError('not a metric event')
    except ValueError as e:
      if number == len(lines):
        logging.warning('Skipped the torn last line of %s (%d characters: '
                        'a crash in the middle of a write).', path, len(line))
        break
      raise InputError(
          f'{path} line {number} is not a metric event ({e}): the file is '
          'damaged. Move it away (the run starts a new one) or delete that '
          'line.') from e
    events.append(event)
  return events
