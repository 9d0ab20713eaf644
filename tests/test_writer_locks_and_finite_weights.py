"""Two rules every writer and every reader of weights keeps.

* **Locks for every writer.** A workdir a run is training in holds
  ``run.lock``; every command that writes there takes the lock
  (``import_torch``) or respects it (``export`` and ``extract`` write no
  file inside a locked workdir). A writer onto a locked workdir is refused
  with one line naming the workdir and the run holding it, and leaves the
  workdir byte for byte as it was. The lock is held here as a live run
  holds it: ``workdir.lock.lock`` in this process (the command lines then
  run in another process, as a second command would).
* **Finite weights.** Every reader (a run's workdir, an exported
  safetensors file, an official PyTorch file, the restore of an
  evaluation's pretrained backbone) refuses NaN and infinities with one
  error naming the file, the array and what it holds, before anything is
  written.

Every network is a 1/32-width NIN-3 (a few thousand parameters),
initialised, never trained.
"""

import contextlib
import functools
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers
from rotnet_jax import models
from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.inference import extract
from rotnet_jax.training import import_official
from rotnet_jax.weights import export
from rotnet_jax.weights import restore
from rotnet_jax.weights import safetensors_format
from rotnet_jax.weights import torch_format
from rotnet_jax.weights import types
from rotnet_jax.weights import workdir_format
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files

STEP = 3
# Where the bad values are planted: a convolution kernel (a parameter) and
# a BatchNorm variance (a statistic), as the exported file keys them, and
# the official file's names of the same two arrays.
KERNEL = 'params/blocks/0/layers/0/conv/kernel'
VARIANCE = 'batch_stats/blocks/1/layers/2/norm/var'
OFFICIAL = {KERNEL: '_feature_blocks.0.Block1_ConvB1.layers.Conv.weight',
            VARIANCE: '_feature_blocks.1.Block2_ConvB3.layers.BatchNorm.'
                      'running_var'}
# (value planted, how the error counts it).
BAD_VALUES = {'nan': (np.nan, '1 NaN'), 'inf': (np.inf, '1 +inf'),
              '-inf': (-np.inf, '1 -inf')}


# ---------------------------------------------------------------------------
# Helpers.


@pytest.fixture(scope='module')
def tiny():
  """``(config, spec, flat variables)`` of an initialised tiny NIN-3."""
  config = helpers.tiny_config()
  spec = models.backbone_spec(config.model, image_size=config.image_size,
                              num_classes=len(config.rotations))
  # Jitted: op by op, the initialisation takes seconds on a busy CPU.
  variables = jax.tree.map(
      np.asarray, jax.jit(lambda: models.init_variables(spec, 0))())
  return config, spec, {k: np.array(v) for k, v in
                        safetensors_format.flatten(variables).items()}


def _planted(flat, keys, value):
  """A copy of `flat` with `value` in the first element of each of `keys`."""
  flat = {k: v.copy() for k, v in flat.items()}
  for key in keys:
    flat[key].flat[0] = value
  return flat


def _weights(spec, flat) -> types.Weights:
  return types.Weights(spec, safetensors_format.unflatten(flat),
                       {'pretrained': 'test', 'pretrained_format': 'test',
                        'pretrained_step': None})


def _write_workdir(folder, config, spec, flat) -> str:
  """A pretext run's workdir whose only checkpoint (step 3) holds `flat`."""
  checkpoints = checkpoint_lib.Checkpointer(str(folder), max_to_keep=1,
                                            async_save=False)
  network = {'backbone': spec}
  try:
    checkpoints.save(STEP, model=safetensors_format.unflatten(flat),
                     opt_state={'count': np.zeros((), np.int32)},
                     meta={'epoch': 1, 'step': STEP, 'network': network,
                           'config': run_files.resolved_config(config),
                           'best': {}})
  finally:
    checkpoints.close()
  run_files.write_config(str(folder), config, network)
  return str(folder)


def _official_file(path, flat, num_blocks=3) -> str:
  """`flat` saved as the official code saves a NIN (keys, OIHW, [out, in])."""
  torch = pytest.importorskip('torch')
  state = {}
  for s in range(num_blocks):
    for j in range(3):
      ours = f'blocks/{s}/layers/{j}'
      theirs = f'_feature_blocks.{s}.Block{s + 1}_ConvB{j + 1}.layers.'
      state[f'{theirs}Conv.weight'] = flat[
          f'params/{ours}/conv/kernel'].transpose(3, 2, 0, 1)
      for name, key in (('weight', 'params/{}/norm/scale'),
                        ('bias', 'params/{}/norm/bias'),
                        ('running_mean', 'batch_stats/{}/norm/mean'),
                        ('running_var', 'batch_stats/{}/norm/var')):
        state[f'{theirs}BatchNorm.{name}'] = flat[key.format(ours)]
  classifier = f'_feature_blocks.{num_blocks}.Classifier.'
  state[f'{classifier}weight'] = flat['params/classifier/kernel'].T
  state[f'{classifier}bias'] = flat['params/classifier/bias']
  torch.save({'epoch': 7, 'network': {
      k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}},
             str(path))
  return str(path)




def _command(module, *args):
  return subprocess.run(
      [sys.executable, '-m', module, *map(str, args)], capture_output=True,
      text=True, cwd=helpers.REPO_ROOT, timeout=300, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _holder_named(message, workdir):
  """Asserts `message` names `workdir` and this process as its holder."""
  for text in (str(workdir), 'in use by another run', socket.gethostname(),
               f'process {os.getpid()}'):
    assert text in message, (text, message)


def _one_error_line(result, workdir):
  """Exit 2, one ``error:`` line naming `workdir` and its holder."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  _holder_named(errors[0], workdir)


# ---------------------------------------------------------------------------
# The lock itself.


def test_a_lock_this_process_holds_is_live_and_a_leftover_of_its_id_is_not(
    tmp_path):
  workdir = str(tmp_path / 'run')
  with workdir_lock.lock(workdir):
    # Another writer of this process (an import while a notebook trains).
    with pytest.raises(InputError) as error:
      workdir_lock.check_not_locked(workdir)
    _holder_named(str(error.value), workdir)
    with pytest.raises(InputError, match='in use by another run'):
      with workdir_lock.lock(workdir):
        pass
  workdir_lock.check_not_locked(workdir)
  # A lock naming this process that no `lock` of it holds: an earlier
  # process with the same id left it. Stale, taken over.
  lock_file = tmp_path / 'run' / run_files.LOCK_FILE
  lock_file.write_text(f'{{"host": "{socket.gethostname()}", "pid": '
                       f'{os.getpid()}, "started": "then"}}\n')
  workdir_lock.check_not_locked(workdir)
  with workdir_lock.lock(workdir):
    assert '"started": "then"' not in lock_file.read_text()
  assert not lock_file.exists()


# ---------------------------------------------------------------------------
# import_torch: takes the lock.


@pytest.mark.slow  # About 9 s; the lock itself is tested in the fast tier.
def test_import_onto_a_locked_workdir_is_refused_and_changes_nothing(
    tmp_path, tiny):
  """The command line refused while a run holds the workdir, even with
  --overwrite; the same import once the run is gone succeeds."""
  pytest.importorskip('torch')
  _, spec, flat = tiny
  official = _official_file(tmp_path / 'model_net_epoch7', flat)
  workdir = tmp_path / 'imported'
  import_official.import_file(official, str(workdir))
  before = helpers.snapshot(tmp_path)
  with workdir_lock.lock(str(workdir)):
    result = _command('rotnet_jax.import_torch', official,
                      f'--workdir={workdir}', '--overwrite')
    _one_error_line(result, workdir)
    # In this process too (a notebook importing while it trains).
    with pytest.raises(InputError) as error:
      import_official.import_file(official, str(workdir), overwrite=True)
    _holder_named(str(error.value), workdir)
    # Nor into a folder inside it.
    with pytest.raises(InputError, match='is inside the workdir'):
      import_official.import_file(official, str(workdir / 'sub'))
  assert helpers.snapshot(tmp_path) == before
  # No run holds it: replaced, and the import's own lock is gone.
  import_official.import_file(official, str(workdir), overwrite=True)
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json']
  assert sorted(os.listdir(tmp_path)) == ['imported', 'model_net_epoch7']
  assert weights_lib.read(str(workdir)).spec == spec


def test_a_run_that_starts_during_an_import_stops_it_or_is_stopped(
    tmp_path, tiny, monkeypatch):
  """The lock is taken for the writing, not only checked up front: a run
  that takes the workdir while the file is read refuses the import; and
  while the import writes, the workdir (also the renamed new one) is
  locked against a run."""
  pytest.importorskip('torch')
  _, _, flat = tiny
  official = _official_file(tmp_path / 'model_net_epoch7', flat)
  workdir = tmp_path / 'imported'
  import_official.import_file(official, str(workdir))
  before = helpers.snapshot(tmp_path)
  run = contextlib.ExitStack()
  read = torch_format.read

  def read_while_a_run_starts(*args, **kwargs):
    weights = read(*args, **kwargs)
    run.enter_context(workdir_lock.lock(str(workdir)))
    return weights

  monkeypatch.setattr(torch_format, 'read', read_while_a_run_starts)
  with run, pytest.raises(InputError) as error:
    import_official.import_file(official, str(workdir), overwrite=True)
  _holder_named(str(error.value), workdir)
  assert helpers.snapshot(tmp_path) == before
  monkeypatch.setattr(torch_format, 'read', read)

  publish = import_official._publish  # pylint: disable=protected-access
  seen = []

  def publish_and_try_a_run(tmp, full):
    with pytest.raises(InputError, match='in use by another run'):
      workdir_lock.check_not_locked(full)  # The old workdir.
    publish(tmp, full)
    with pytest.raises(InputError, match='in use by another run'):
      workdir_lock.check_not_locked(full)  # The new one, renamed in.
    seen.append(full)

  monkeypatch.setattr(import_official, '_publish', publish_and_try_a_run)
  import_official.import_file(official, str(workdir), overwrite=True)
  assert seen == [str(workdir)]
  workdir_lock.check_not_locked(str(workdir))  # Released.
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json']


# ---------------------------------------------------------------------------
# export and extract: respect the lock.


def test_export_into_a_locked_workdir_is_refused(tmp_path, tiny):
  config, spec, flat = tiny
  source = safetensors_format.write(_weights(spec, flat),
                                    str(tmp_path / 'nin3.safetensors'))
  workdir = _write_workdir(tmp_path / 'run', config, spec, flat)
  out = os.path.join(workdir, 'nin3.safetensors')
  before = helpers.snapshot(workdir)
  with workdir_lock.lock(workdir):
    for target in (out, os.path.join(workdir, 'checkpoints', 'x.safetensors')):
      with pytest.raises(InputError, match='is inside the workdir') as error:
        export.export(source, target)
      _holder_named(str(error.value), workdir)
  assert helpers.snapshot(workdir) == before
  assert export.export(source, out) == out  # No run there now.


@pytest.mark.slow
def test_export_and_extract_command_lines_into_a_locked_workdir(
    tmp_path, tiny):
  """One ``error:`` line, exit 2, the workdir unchanged (each command
  starts a process: seconds; the fast tier has import_torch's)."""
  config, spec, flat = tiny
  source = safetensors_format.write(_weights(spec, flat),
                                    str(tmp_path / 'nin3.safetensors'))
  workdir = _write_workdir(tmp_path / 'run', config, spec, flat)
  before = helpers.snapshot(workdir)
  with workdir_lock.lock(workdir):
    for result in (
        _command('rotnet_jax.export', source,
                 os.path.join(workdir, 'nin3.safetensors')),
        _command('rotnet_jax.extract', f'--pretrained={source}',
                 '--dataset=digits', f'--out={workdir}/feats.npz')):
      _one_error_line(result, workdir)
      assert 'is inside the workdir' in result.stderr
  assert helpers.snapshot(workdir) == before


def test_extract_into_a_locked_workdir_is_refused_before_and_after(
    tmp_path, tiny, monkeypatch):
  """Refused up front; and, when a run takes the workdir during the
  extraction (minutes on a real split), before the file is written."""
  config, spec, flat = tiny
  source = safetensors_format.write(_weights(spec, flat),
                                    str(tmp_path / 'nin3.safetensors'))
  workdir = _write_workdir(tmp_path / 'run', config, spec, flat)
  out = os.path.join(workdir, 'feats.npz')
  before = helpers.snapshot(workdir)
  arguments = dict(pretrained=source, dataset='digits', split='test',
                   blocks=['conv2'], out=out, pool=True)
  features = extract.extract

  def never(*args, **kwargs):
    raise AssertionError('features extracted for a refused --out')

  monkeypatch.setattr(extract, 'extract', never)
  with workdir_lock.lock(workdir):
    with pytest.raises(InputError) as error:
      extract.extract_split(**arguments)
  _holder_named(str(error.value), workdir)
  assert helpers.snapshot(workdir) == before
  run = contextlib.ExitStack()

  def extract_while_a_run_starts(*args, **kwargs):
    run.enter_context(workdir_lock.lock(workdir))
    return features(*args, **kwargs)

  monkeypatch.setattr(extract, 'extract', extract_while_a_run_starts)
  with run, pytest.raises(InputError) as error:
    extract.extract_split(**arguments)
  _holder_named(str(error.value), workdir)
  assert helpers.snapshot(workdir) == before
  monkeypatch.setattr(extract, 'extract', features)
  summary = extract.extract_split(**arguments)
  assert summary['out'] == out and summary['images'] > 0


# ---------------------------------------------------------------------------
# Readers: finite weights only.


def _refused(read, *texts):
  with pytest.raises(InputError) as error:
    read()
  message = str(error.value)
  assert len(message.splitlines()) == 1, message
  for text in texts:
    assert text in message, (text, message)
  return message


@pytest.mark.parametrize('bad', BAD_VALUES)
def test_an_exported_file_with_non_finite_weights_is_refused(
    tmp_path, tiny, bad):
  _, spec, flat = tiny
  value, found = BAD_VALUES[bad]
  clean = safetensors_format.write(_weights(spec, flat),
                                   str(tmp_path / 'clean.safetensors'))
  assert weights_lib.read(clean).spec == spec  # The control.
  path = safetensors_format.write(
      _weights(spec, _planted(flat, [KERNEL, VARIANCE], value)),
      str(tmp_path / f'{bad}.safetensors'))
  expected = [path] + [f'{key} holds {found} (of {flat[key].size} values)'
                       for key in (KERNEL, VARIANCE)]
  for read in (safetensors_format.read, weights_lib.read):
    _refused(functools.partial(read, path), *expected)
  # Nothing is written from it.
  out = tmp_path / 'out.safetensors'
  _refused(functools.partial(export.export, path, str(out)), *expected)
  assert not out.exists()


@pytest.mark.parametrize('bad', ['nan', 'inf'])
def test_a_workdir_with_non_finite_weights_is_refused_by_both_readers(
    tmp_path, tiny, one_device_mesh, bad):
  """``weights.read`` (load, export, extract) and the restore of an
  evaluation's pretrained backbone onto the mesh."""
  config, spec, flat = tiny
  value, found = BAD_VALUES[bad]
  workdir = _write_workdir(tmp_path / 'run', config, spec,
                           _planted(flat, [VARIANCE], value))
  where = f'the checkpoint in {workdir}/checkpoints (step {STEP})'
  evaluation = helpers.tiny_config(mode='evaluate', pretrained=workdir)
  for read in (functools.partial(workdir_format.read, workdir),
               functools.partial(weights_lib.read, workdir),
               functools.partial(restore.load_backbone, evaluation,
                                 one_device_mesh)):
    _refused(read, where, VARIANCE, found)
  # The control: the same workdir with finite weights restores.
  clean = _write_workdir(tmp_path / 'clean', config, spec, flat)
  evaluation.pretrained = clean
  restored = restore.load_backbone(evaluation, one_device_mesh)
  np.testing.assert_array_equal(
      np.asarray(safetensors_format.flatten(restored.variables)[VARIANCE]),
      flat[VARIANCE])


@pytest.mark.parametrize('bad', ['nan', 'inf'])
def test_an_official_file_with_non_finite_weights_is_refused(
    tmp_path, tiny, bad):
  pytest.importorskip('torch')
  _, spec, flat = tiny
  value, found = BAD_VALUES[bad]
  clean = _official_file(tmp_path / 'clean', flat)
  assert torch_format.read(clean).spec == spec  # The control.
  path = _official_file(tmp_path / f'model_net_{bad}',
                        _planted(flat, [KERNEL, VARIANCE], value))
  expected = [path] + [f'{OFFICIAL[key]} holds {found}'
                       for key in (KERNEL, VARIANCE)]
  _refused(functools.partial(torch_format.read, path), *expected)
  workdir = tmp_path / 'imported'
  _refused(functools.partial(import_official.import_file, path,
                             str(workdir)), *expected)
  assert sorted(os.listdir(tmp_path)) == ['clean', f'model_net_{bad}']


# ---------------------------------------------------------------------------
# A run writes its last files while it still holds the lock.


def _spy_on_results(monkeypatch) -> list[bool]:
  """Whether the workdir was locked at each ``results.json`` write."""
  locked = []
  write_results = run_files.write_results

  def spy(workdir, results):
    locked.append(os.path.exists(os.path.join(workdir, run_files.LOCK_FILE)))
    write_results(workdir, results)

  monkeypatch.setattr(run_files, 'write_results', spy)
  return locked


@pytest.mark.parametrize('head', ['trained', 'knn'])
def test_results_are_written_while_the_run_holds_the_lock(
    head, tiny_pretext_run, tmp_path, monkeypatch, one_device_mesh):
  # pylint: disable=g-import-not-at-top
  from rotnet_jax import config_schema
  from rotnet_jax.training import train
  # pylint: enable=g-import-not-at-top
  if head == 'trained':
    config = helpers.tiny_config(batch_size=100)
  else:
    config = config_schema.evaluation_defaults('knn')
    config.update_from_flattened_dict({
        'dataset': 'digits', 'num_train_examples': 500, 'batch_size': 100,
        'pretrained': tiny_pretext_run, 'knn_k': 20, 'blocks': ('conv2',)})
  locked = _spy_on_results(monkeypatch)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  assert locked == [True]
  assert not os.path.exists(os.path.join(workdir, run_files.LOCK_FILE))
