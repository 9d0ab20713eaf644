"""Sample-weighted metric sums and the metric files."""

import glob
import math
import os

import jax.numpy as jnp

from rotnet_jax.training import metrics


def test_summary_is_weighted_per_sample_not_per_batch():
  sums = [{'loss_sum': jnp.float32(3.0), 'correct': jnp.float32(1.0),
           'count': jnp.float32(4.0)},
          {'loss_sum': jnp.float32(1.0), 'correct': jnp.float32(0.0),
           'count': jnp.float32(1.0)}]
  summary = metrics.summarize(sums)
  assert summary == {'loss': 0.8, 'accuracy': 0.2, 'count': 5}
  empty = metrics.summarize([])
  assert math.isnan(empty['loss']) and empty['count'] == 0


def test_writer_appends_jsonl_and_tensorboard(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(step=10, epoch=0.5, split='train', loss=1.25, accuracy=0.5,
               images_per_sec=100.0)
  writer.close()
  writer = metrics.MetricWriter(str(tmp_path))  # A resumed run appends.
  writer.write(step=20, epoch=1, split='test', loss=1.0, accuracy=0.75,
               images_per_sec=50.0)
  writer.close()
  events = metrics.read_jsonl(str(tmp_path))
  assert events == [
      {'step': 10, 'epoch': 0.5, 'split': 'train', 'loss': 1.25,
       'accuracy': 0.5, 'images_per_sec': 100.0},
      {'step': 20, 'epoch': 1.0, 'split': 'test', 'loss': 1.0,
       'accuracy': 0.75, 'images_per_sec': 50.0}]
  event_files = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.*'))
  assert event_files and all(os.path.getsize(f) > 0 for f in event_files)


def test_durations_read_naturally():
  assert metrics.format_duration(75) == '1m15s'
  assert metrics.format_duration(3 * 3600 + 125) == '3h02m'
