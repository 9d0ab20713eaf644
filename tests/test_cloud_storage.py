"""gs:// workdirs, offline: every file of a run goes through one path library.

A mocked Cloud Storage (``mock_gcs``) maps ``gs://BUCKET/...`` to a local
folder. What it proves, and what it does not:

* Every call our code, Orbax and TFDS make through ``etils.epath`` reaches
  the mock (``etils.epath.testing.mock_epath``; TensorFlow's GCS backend,
  which epath prefers when TensorFlow is installed, is switched off so
  that the mock backend is used). tensorboardX writes through epath too
  (``metrics._EpathEventFiles``). Files that landed in the backing folder
  went through that path; anything written with ``os``/``open`` to a
  ``gs://`` string would land in a local folder named ``gs:`` instead
  (checked) or fail.
* Orbax writes its arrays with TensorStore's own ``gcs`` driver, not
  epath: the mock redirects that driver's spec to TensorStore's ``file``
  driver at the same backing folder (``gcs_utils.get_kvstore_for_gcs``),
  and says the bucket has no hierarchical namespace (Orbax asks
  google-cloud-storage otherwise). Orbax's own gs:// choices (commit-file
  atomicity instead of renames) are exercised; TensorStore's network code
  is not.
* The mock is a POSIX folder: it has folders, renames and strong
  consistency; it cannot show eventual-listing effects, upload limits,
  retries, credentials or latency. The lock's atomicity on real Cloud
  Storage rests on the server's ``if_generation_match=0`` precondition,
  emulated here by ``FakeGcsClient`` under one mutex.
"""

import contextlib
import io
import json
import os
import socket
import threading
import time
from unittest import mock

import jax
import numpy as np
import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing

from helpers import tiny_config
from rotnet_jax import weights as weights_lib
from rotnet_jax.commands import report
from rotnet_jax.errors import InputError
from rotnet_jax.experiments import plots
from rotnet_jax.training import train
from rotnet_jax.weights import export
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files

BUCKET = 'gs://test-bucket'


@contextlib.contextmanager
def mock_gcs(root, *, writable=True):
  """Maps ``gs://...`` to the local folder `root` for epath and Orbax.

  Args:
    root: the backing folder (``gs://b/x`` is ``root/b/x``).
    writable: False: every write to a gs:// path is refused, as for a
      bucket this machine may only read.

  Yields:
    ``local(url)``: the backing path of a ``gs://`` URL.
  """
  root = os.fspath(root)

  def local(p):
    p = os.fspath(p)
    return os.path.join(root, p[len('gs://'):]) if p.startswith(
        'gs://') else p

  def url(p):
    p = os.fspath(p)
    inside = p == root or p.startswith(root + os.sep)
    return 'gs://' + os.path.relpath(p, root) if inside else p

  def refuse_writes(p):
    if not writable and os.fspath(p).startswith('gs://'):
      raise PermissionError(f'403 Forbidden: {p} (the mock bucket is '
                            'read-only)')

  def one(original, p, *args, **kwargs):
    return original(local(p), *args, **kwargs)

  def changes(original, p, *args, **kwargs):
    refuse_writes(p)
    return original(local(p), *args, **kwargs)

  def two(original, p, dst, *args, **kwargs):
    refuse_writes(dst)
    return original(local(p), local(dst), *args, **kwargs)

  def open_(original, p, mode):
    if any(c in mode for c in 'wa'):
      refuse_writes(p)
      if os.fspath(p).startswith('gs://'):
        # Cloud Storage has no folders: an object's "parents" need not exist.
        os.makedirs(os.path.dirname(local(p)), exist_ok=True)
    return original(local(p), mode)

  def glob(original, p):
    return [url(x) for x in original(local(p))]

  def walk(original, p, **kwargs):
    for folder, dirs, files in original(local(p), **kwargs):
      yield url(folder), dirs, files

  # Orbax's own GCS decisions live in this internal module (orbax 0.12).
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top,line-too-long

  def kvstore(p):
    refuse_writes(p)
    return {'driver': 'file', 'path': local(str(p))}

  with contextlib.ExitStack() as stack:
    stack.enter_context(epath_testing.mock_epath(
        open=open_, exists=one, isdir=one, listdir=one, glob=glob, walk=walk,
        stat=one, makedirs=changes, mkdir=changes, remove=changes,
        rmtree=changes, copy=two, rename=two, replace=two))
    # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the
    # mocked backends.
    stack.enter_context(mock.patch.object(gpath, '_is_tf_installed',
                                          lambda: False))
    stack.enter_context(mock.patch.object(gcs_utils, 'get_kvstore_for_gcs',
                                          kvstore))
    stack.enter_context(mock.patch.object(
        gcs_utils, 'is_hierarchical_namespace_enabled', lambda p: False))
    yield local


class _PreconditionFailed(Exception):
  code = 412  # As google.api_core.exceptions.PreconditionFailed.


class _NotFound(Exception):
  code = 404  # As google.api_core.exceptions.NotFound.


class FakeGcsClient:
  """The calls of ``google.cloud.storage.Client`` that ``GcsLockStore``
  makes, on the mock's backing folder, with Cloud Storage's generation
  preconditions checked under one mutex (as the server does)."""

  def __init__(self, local):
    self.local = local
    self.mutex = threading.Lock()
    self.generations = {}
    self.last_generation = 0

  def bucket(self, name):
    return _FakeBucket(self, name)

  def generation(self, url):
    """The object's generation (mutex held), None if there is none."""
    if not os.path.exists(self.local(url)):
      self.generations.pop(url, None)
      return None
    if url not in self.generations:  # Written through epath, not us.
      self.last_generation += 1
      self.generations[url] = self.last_generation
    return self.generations[url]


class _FakeBucket:

  def __init__(self, client, name):
    self.client, self.name = client, name

  def blob(self, name):
    return _FakeBlob(self.client, f'gs://{self.name}/{name}')

  def get_blob(self, name):
    blob = self.blob(name)
    with self.client.mutex:
      blob.generation = self.client.generation(blob.url)
    return blob if blob.generation is not None else None


class _FakeBlob:

  def __init__(self, client, url):
    self.client, self.url, self.generation = client, url, None

  def _check(self, if_generation_match):
    current = self.client.generation(self.url)
    if if_generation_match is not None and (current or 0) != (
        if_generation_match):
      raise _PreconditionFailed(f'412 {self.url}')
    return current

  def upload_from_string(self, data, content_type=None,
                         if_generation_match=None):
    del content_type
    with self.client.mutex:
      self._check(if_generation_match)
      path = self.client.local(self.url)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write(data)
      self.client.last_generation += 1
      self.client.generations[self.url] = self.client.last_generation

  def download_as_bytes(self, if_generation_match=None):
    with self.client.mutex:
      if self._check(if_generation_match) is None:
        raise _NotFound(f'404 {self.url}')
      with open(self.client.local(self.url), 'rb') as f:
        return f.read()

  def delete(self, if_generation_match=None):
    with self.client.mutex:
      if self._check(if_generation_match) is None:
        raise _NotFound(f'404 {self.url}')
      os.remove(self.client.local(self.url))
      self.client.generations.pop(self.url, None)


@pytest.fixture
def gcs(tmp_path):
  """A mocked bucket ``gs://test-bucket``; yields its backing folder's
  ``local(url)``. Locks use GcsLockStore on a FakeGcsClient."""
  with mock_gcs(tmp_path / 'gcs') as local:
    workdir_lock.set_lock_store('gs', workdir_lock.GcsLockStore(
        FakeGcsClient(local)))
    try:
      yield local
    finally:
      workdir_lock.set_lock_store('gs', None)


def test_urls_stay_urls():
  assert filesystem.absolute('gs://b/w/') == 'gs://b/w'
  assert run_files.path('gs://b/w', run_files.CONFIG_FILE) == (
      'gs://b/w/config.json')
  assert filesystem.join('gs://b/r', 'seed0', 'pretext/nin4') == (
      'gs://b/r/seed0/pretext/nin4')
  assert filesystem.parent('gs://b/w/config.json') == 'gs://b/w'
  assert filesystem.relative('gs://b/r/seed0/x', 'gs://b/r/') == 'seed0/x'
  assert filesystem.free_bytes('gs://b/w') is None
  assert filesystem.is_remote('gs://b') and not filesystem.is_remote('/gs/b')


def _events(local_or_url):
  return [{k: v for k, v in e.items() if k != 'images_per_sec'}
          for e in map(json.loads, filesystem.resolve(run_files.path(
              local_or_url, run_files.METRICS_FILE)).read_text().split(
                  '\n')[:-1])]


# A run, its resume, an evaluation and a report on the fake bucket: the slow
# tier (the default run keeps the bucket's lock, probe and URL tests).
@pytest.mark.slow
def test_a_run_its_resume_an_evaluation_and_the_report_work_on_gs(
    gcs, tmp_path, one_device_mesh):
  config = tiny_config(batch_size=100, num_epochs=2)
  pretext = f'{BUCKET}/root/pretext'
  evaluation = f'{BUCKET}/root/eval'
  # The same runs on a local disk: the reference.
  local_root = tmp_path / 'local'
  train.train_and_evaluate(config, str(local_root / 'pretext'),
                           mesh=one_device_mesh)

  first = config.copy_and_resolve_references()
  first.num_epochs = 1
  train.train_and_evaluate(first, pretext, mesh=one_device_mesh)
  assert os.path.isdir(gcs(f'{pretext}/checkpoints/5'))
  assert not os.path.exists(gcs(f'{pretext}/run.lock'))  # Released.
  train.train_and_evaluate(config, pretext, mesh=one_device_mesh)  # Resumes.
  assert os.path.isdir(gcs(f'{pretext}/checkpoints/10'))

  # The resumed gs:// run is the uninterrupted local one.
  assert _events(pretext) == _events(local_root / 'pretext')
  assert run_files.read_results(pretext)['heads'] == (
      run_files.read_results(local_root / 'pretext')['heads'])
  gs_weights = weights_lib.read(pretext)
  local_weights = weights_lib.read(str(local_root / 'pretext'))
  for a, b in zip(jax.tree.leaves(gs_weights.variables),
                  jax.tree.leaves(local_weights.variables)):
    np.testing.assert_array_equal(a, b)

  # An evaluation from the gs:// pretext run (whose weights were just
  # checked equal to the local run's), into a gs:// workdir.
  train.train_and_evaluate(
      tiny_config(mode='evaluate', pretrained=pretext, batch_size=100,
                  head='linear', linear_pool_size=2, blocks=('conv3',)),
      evaluation, mesh=one_device_mesh)
  heads = run_files.read_results(evaluation)['heads']
  assert [(h['head'], h['pretrained'], h['pretrained_step']) for h in heads
          ] == [('conv3', pretext, 10)]
  assert 0 <= heads[0]['final_test_accuracy'] <= 1
  assert run_files.read_config(evaluation)['pretrained'] == pretext

  for name in (run_files.CONFIG_FILE, run_files.METRICS_FILE,
               run_files.RESULTS_FILE):
    for workdir in (pretext, evaluation):
      assert os.path.isfile(gcs(run_files.path(workdir, name)))
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(
      gcs(f'{pretext}/{run_files.TENSORBOARD_DIR}')))

  # The report, an export and a plot, from and to the bucket.
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert report.main(['report', f'{BUCKET}/root']) == 0
  assert 'conv3' in out.getvalue()
  exported = export.export(pretext, f'{BUCKET}/nin.safetensors')
  assert os.path.isfile(gcs(exported))
  for a, b in zip(jax.tree.leaves(weights_lib.read(exported).variables),
                  jax.tree.leaves(local_weights.variables)):
    np.testing.assert_array_equal(a, b)
  written = plots.plot_path(pretext)
  assert [os.path.isfile(gcs(w)) for w in written] == [True]

  # Nothing went to a local folder named after the URL.
  for folder in (os.getcwd(), tmp_path):
    assert not os.path.exists(os.path.join(folder, 'gs:'))


def test_the_workdir_check_writes_a_probe_and_names_an_unwritable_bucket(
    tmp_path):
  with mock_gcs(tmp_path / 'gcs') as local:
    run_files.check_workdir(f'{BUCKET}/new/run')
    assert os.listdir(local(f'{BUCKET}/new/run')) == []  # Probe removed.
    with open(local(f'{BUCKET}/file'), 'w') as f:
      f.write('x')
    with pytest.raises(InputError, match='is a file, not a folder'):
      run_files.check_workdir(f'{BUCKET}/file')
  with mock_gcs(tmp_path / 'gcs', writable=False):
    with pytest.raises(InputError, match=r"--workdir='gs://test-bucket/run' "
                       r'cannot be written \(PermissionError: 403'):
      run_files.check_workdir(f'{BUCKET}/run')


def test_the_gs_lock_is_one_atomic_create_and_takes_over_only_stale_locks(
    gcs):
  workdir = f'{BUCKET}/locked'
  lock_file = run_files.path(workdir, run_files.LOCK_FILE)
  store = workdir_lock.lock_store(lock_file)
  assert isinstance(store, workdir_lock.GcsLockStore)

  # Of many runs creating the lock at once, exactly one gets it.
  results = []
  threads = [threading.Thread(
      target=lambda i=i: results.append(store.create(lock_file, f'{i}\n')))
             for i in range(16)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(results) == [False] * 15 + [True]
  store.delete(lock_file)

  with workdir_lock.lock(workdir):
    holder = json.loads(open(gcs(lock_file)).read())
    assert holder['pid'] == os.getpid()
  assert not os.path.exists(gcs(lock_file))  # Released.

  # A live run of this host (our parent process) holds it: refused.
  live = {'host': socket.gethostname(), 'pid': os.getppid(),
          'started': 'now'}
  with open(gcs(lock_file), 'w') as f:
    f.write(json.dumps(live))
  with pytest.raises(InputError, match='in use by another run'):
    with workdir_lock.lock(workdir):
      pass
  assert json.loads(open(gcs(lock_file)).read()) == live

  # A lock of a gone process of this host is taken over...
  dead = dict(live, pid=2**22 + 12345)  # Above Linux's largest pid.
  with open(gcs(lock_file), 'w') as f:
    f.write(json.dumps(dead))
  workdir_lock.check_not_locked(workdir)
  with workdir_lock.lock(workdir):
    assert json.loads(open(gcs(lock_file)).read())['pid'] == os.getpid()
  # ... another host's is not, and the message says how to remove it.
  with open(gcs(lock_file), 'w') as f:
    f.write(json.dumps(dict(dead, host='elsewhere')))
  with pytest.raises(InputError, match=f'gcloud storage rm {lock_file}'):
    workdir_lock.check_not_locked(workdir)
  with pytest.raises(InputError, match='in use by another run'):
    with workdir_lock.lock(workdir):
      pass
  # A stale lock replaced by another run after it was read stays: the
  # delete is conditional on the generation read.
  client = FakeGcsClient(gcs)
  store = workdir_lock.GcsLockStore(client)
  found = store.read(lock_file)
  client.bucket('test-bucket').blob('locked/run.lock').upload_from_string(
      'a newer lock\n')
  assert not store.delete(lock_file, found[1])
  assert store.read(lock_file)[0] == 'a newer lock\n'
  assert store.delete(lock_file, store.read(lock_file)[1])
  assert store.read(lock_file) is None


def test_a_lock_lives_by_its_heartbeat(gcs, monkeypatch):
  # A preempted TPU VM never comes back to release its lock, and its
  # successor is another host: the lease is what frees the workdir.
  workdir = f'{BUCKET}/leased'
  lock_file = run_files.path(workdir, run_files.LOCK_FILE)
  other = {'host': 'a-preempted-vm', 'pid': 4321, 'started': 'then'}

  def write(holder):
    os.makedirs(os.path.dirname(gcs(lock_file)), exist_ok=True)
    with open(gcs(lock_file), 'w') as f:
      f.write(json.dumps(holder))

  write(dict(other, heartbeat=time.time() - 60))  # Heard from recently.
  with pytest.raises(InputError, match=r'last heard from 6\d s ago'):
    workdir_lock.check_not_locked(workdir)
  write(dict(other, heartbeat=time.time() - workdir_lock.LOCK_LEASE_S - 1))
  workdir_lock.check_not_locked(workdir)  # The lease ran out: stale.
  monkeypatch.setattr(workdir_lock, 'LOCK_HEARTBEAT_S', 0.05)

  def read_holder():
    # The fake bucket is a local folder whose file the heartbeat thread
    # rewrites in place (a real object is replaced whole): a read may
    # land during the write and see part of it. Read again then.
    for _ in range(100):
      with open(gcs(lock_file)) as f:
        text = f.read()
      try:
        return json.loads(text)
      except json.JSONDecodeError:
        time.sleep(0.01)
    raise AssertionError(f'{lock_file} never held a whole JSON object')

  with workdir_lock.lock(workdir):
    first = read_holder()
    assert first['host'] == socket.gethostname()
    time.sleep(0.5)
    # The running run renews its heartbeat.
    later = read_holder()
    assert later['heartbeat'] > first['heartbeat']
    assert {k: v for k, v in later.items() if k != 'heartbeat'} == {
        k: v for k, v in first.items() if k != 'heartbeat'}
  assert not os.path.exists(gcs(lock_file))
