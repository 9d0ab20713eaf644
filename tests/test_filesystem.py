"""A workdir's small files survive a failed rewrite.

``results.json`` and ``config.json`` are rewritten in place of the old
ones (``filesystem.write_text``); exported weights and features go through
``filesystem.write_file_atomically``. A write that fails midway (a full
disk, a killed process) must leave the old file as it was, never half of
the new one.
"""

import errno
import json
import os

import pytest

from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files

_OLD = {'experiment': 'old', 'complete': True,
        'heads': [{'head': 'rotation', 'final_test_accuracy': 0.5}]}
# Larger than the old content: a half-written file would differ from it.
_NEW = {'experiment': 'new', 'complete': True,
        'heads': [{'head': f'conv{i}', 'final_test_accuracy': 0.25}
                  for i in range(50)]}


class _FullHalfway:
  """A file open for writing that takes half of what it is given, then
  fails as a full disk does."""

  def __init__(self, file):
    self._file = file

  def write(self, data):
    self._file.write(data[:len(data) // 2])
    self._file.flush()
    raise OSError(errno.ENOSPC, 'No space left on device')

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._file.close()
    return False

  def __getattr__(self, name):
    return getattr(self._file, name)


def _open_filling_up(real_open):
  """``open`` whose files opened for writing fail halfway."""
  def fake_open(file, mode='r', *args, **kwargs):
    opened = real_open(file, mode, *args, **kwargs)
    return _FullHalfway(opened) if set(mode) & set('wax+') else opened
  return fake_open


def test_a_failed_rewrite_of_results_json_keeps_the_old_file(
    tmp_path, monkeypatch):
  workdir = str(tmp_path)
  run_files.write_results(workdir, _OLD)
  results = tmp_path / run_files.RESULTS_FILE
  before = results.read_bytes()
  monkeypatch.setattr(filesystem, 'open', _open_filling_up(open),
                      raising=False)
  with pytest.raises(OSError, match='No space left'):
    run_files.write_results(workdir, _NEW)
  monkeypatch.undo()
  assert results.read_bytes() == before
  assert run_files.read_results(workdir) == _OLD
  # And no half-written file beside it.
  assert os.listdir(workdir) == [run_files.RESULTS_FILE]
  # Once there is space again, the next write replaces it.
  run_files.write_results(workdir, _NEW)
  assert run_files.read_results(workdir) == _NEW


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_other(
    tmp_path):
  target = tmp_path / 'feats.json'
  target.write_text(json.dumps(_OLD))

  def write_half(path):
    with open(path, 'w') as f:
      f.write(json.dumps(_NEW)[:10])
    raise KeyboardInterrupt  # Killed midway.

  with pytest.raises(KeyboardInterrupt):
    filesystem.write_file_atomically(str(target), write_half)
  assert json.loads(target.read_text()) == _OLD
  assert os.listdir(tmp_path) == ['feats.json']

  def write_whole(path):
    with open(path, 'w') as f:
      f.write(json.dumps(_NEW))

  filesystem.write_file_atomically(str(target), write_whole)
  assert json.loads(target.read_text()) == _NEW
