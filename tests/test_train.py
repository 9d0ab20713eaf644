"""The train step and loop: sharding invariance, learning, exact resume."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import max_relative_difference
from helpers import tiny_config
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import digits
from rotnet_jax.data import transforms
from rotnet_jax.errors import TrainingDiverged
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import steps
from rotnet_jax.training import train
from rotnet_jax.workdir import checkpoint as checkpoint_lib


def _spec(config):
  return models.backbone_spec(config.model, image_size=32, num_classes=4)


def _normalization(config):
  return (config.mean_rgb, config.std_rgb,
          models.compute_dtype(config.half_precision))


def _init(config, mesh):
  """The pretext objective and its freshly initialised state."""
  objective = objectives.RotationPretext(config)
  return objective, steps.init_state(objective, optim.sgd(0.1), config.seed,
                                     mesh)


def _step_on(mesh, batch, config):
  tx = optim.sgd(0.1)
  objective, state = _init(config, mesh)
  step = jax.jit(functools.partial(
      steps.train_step, constants=None, objective=objective, tx=tx,
      normalization=_normalization(config)),
                 out_shardings=parallel.replicated(mesh))
  new_state, sums = step(state, parallel.host_to_global(mesh, batch), 0)
  return objective, jax.device_get(new_state), jax.device_get(
      sums['rotation'])


def _uneven_batch(size=16):
  images, labels = digits.load('train')
  images = images[:size].copy()
  images[: size // 2] = 255 - images[: size // 2]  # Shards look different.
  return {'image': images, 'label': labels[:size],
          'mask': np.ones(size, np.float32)}


# The slow tier, with the other 8-device equivalences; the default run's is
# the BatchNorm test below (the same 8-device step).
@pytest.mark.slow
def test_eight_devices_take_the_same_step_as_one(one_device_mesh,
                                                 eight_device_mesh):
  config = tiny_config(**{'model.width': 1 / 16})
  batch = _uneven_batch()
  _, one, sums_one = _step_on(one_device_mesh, batch, config)
  _, eight, sums_eight = _step_on(eight_device_mesh, batch, config)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(sums_one['loss_sum'], sums_eight['loss_sum'],
                             rtol=1e-5)
  assert sums_one['count'] == sums_eight['count'] == 64
  # And the step did something.
  _, init = _init(config, one_device_mesh)
  assert not np.allclose(init.params['classifier']['kernel'],
                         one.params['classifier']['kernel'])


@pytest.mark.slow  # About 13 s.
def test_half_precision_computes_in_bfloat16_and_keeps_float32_params(
    one_device_mesh):
  batch = _uneven_batch()
  _, full, full_sums = _step_on(one_device_mesh, batch,
                                tiny_config(**{'model.width': 1 / 16}))
  objective, half, half_sums = _step_on(
      one_device_mesh, batch,
      tiny_config(half_precision=True, **{'model.width': 1 / 16}))
  assert {x.dtype for x in jax.tree.leaves(
      (half.params, half.batch_stats, half.opt_state))} == {np.dtype('float32')}
  model = nnx.merge(objective.graphdef, half.params, half.batch_stats)
  assert model.blocks[0].layers[0].conv.dtype == jnp.bfloat16
  # Same step up to bfloat16 rounding, and not bit-identical. The update
  # is small next to the kernel (its largest entry is about 0.01), so the
  # step is compared, not the parameters: bfloat16 moves the classifier
  # kernel by about 0.75% of the float32 step (measured).
  _, init = _init(tiny_config(**{'model.width': 1 / 16}), one_device_mesh)
  init_kernel = np.asarray(jax.device_get(init.params['classifier']['kernel']))
  full_update = full.params['classifier']['kernel'] - init_kernel
  half_update = half.params['classifier']['kernel'] - init_kernel
  assert np.linalg.norm(full_update) > 1e-3
  assert (np.linalg.norm(half_update - full_update) <
          0.05 * np.linalg.norm(full_update))
  assert not np.array_equal(half_update, full_update)
  np.testing.assert_allclose(half_sums['loss_sum'], full_sums['loss_sum'],
                             rtol=2e-3)


@pytest.mark.slow  # About 10 s.
def test_batchnorm_statistics_are_over_the_global_batch(one_device_mesh,
                                                       eight_device_mesh):
  config = tiny_config(**{'model.width': 1 / 16})
  batch = _uneven_batch()
  objective, new_state, _ = _step_on(eight_device_mesh, batch, config)
  # The first conv's output on the whole rotated batch, with initial weights.
  _, init = _init(config, one_device_mesh)
  model = models.build_backbone(_spec(config), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.State(init.params), nnx.State(init.batch_stats))
  images = jax.numpy.asarray(batch['image'])
  normalized = dict(batch, image=transforms.normalize(
      images, *_normalization(config)))
  inputs = objective.task(normalized, 0, train=True)[0]
  conv_out = np.asarray(model.blocks[0].layers[0].conv(inputs))
  global_mean = conv_out.mean(axis=(0, 1, 2))
  first_shard_mean = conv_out[:8].mean(axis=(0, 1, 2))  # Device 0's rows.
  running_mean = new_state.batch_stats['blocks'][0]['layers'][0]['norm'][
      'mean']
  # Running mean after one step from zero: 0.1 x the global batch mean.
  np.testing.assert_allclose(running_mean, 0.1 * global_mean, rtol=1e-4,
                             atol=1e-6)
  # The check can fail: device 0's shard alone has other statistics.
  assert np.abs(0.1 * first_shard_mean - running_mean).max() > 1e-3


def _final_params(workdir, config, mesh):
  """Parameters of the latest checkpoint in `workdir`."""
  target = models.abstract_variables(_spec(config),
                                     parallel.replicated(mesh),
                                     models.param_dtype(config.float64))
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  restored = checkpoints.restore(checkpoints.latest_step(), model=target)
  return jax.device_get(restored['model']), restored['meta']


# Four runs: the slow tier (the default run's bit-identical resume is a
# mid-epoch one, test_preemption.py, and the tf.data source's mid-epoch
# start is checked there too).
@pytest.mark.slow
@pytest.mark.parametrize('pipeline', ['device', 'tfdata'])
def test_interrupted_then_resumed_training_is_bit_identical(
    pipeline, tmp_path, one_device_mesh):
  config = tiny_config(pipeline=pipeline, batch_size=100, num_epochs=2,
                       learning_rate_table=((1, 0.1), (2, 0.02)))
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight, mesh=one_device_mesh)

  resumed = str(tmp_path / 'resumed')
  first_half = config.copy_and_resolve_references()
  first_half.num_epochs = 1
  train.train_and_evaluate(first_half, resumed, mesh=one_device_mesh)
  assert _final_params(resumed, config, one_device_mesh)[1]['epoch'] == 1
  train.train_and_evaluate(config, resumed, mesh=one_device_mesh)

  expected, expected_meta = _final_params(straight, config, one_device_mesh)
  got, got_meta = _final_params(resumed, config, one_device_mesh)
  assert got_meta == expected_meta
  assert (got_meta['epoch'], got_meta['step']) == (2, 10)
  assert got_meta['network'] == {'backbone': _spec(config)}
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  # The resumed run logged only its own epoch: no repeated events.
  epochs = [e['epoch'] for e in metrics_lib.read_jsonl(resumed)
            if e['split'] == 'test']
  assert epochs == [1, 2]


# Two runs, the first cut short: the slow tier.
@pytest.mark.slow
def test_a_crash_after_the_last_checkpoint_logs_each_event_once(
    tmp_path, one_device_mesh):
  config = tiny_config(batch_size=100, num_epochs=2)
  train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  # As if the run had died after logging epoch 2 but before saving it.
  shutil.rmtree(tmp_path / 'checkpoints' / '10')
  train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  events = metrics_lib.read_jsonl(str(tmp_path))
  steps = [(e['split'], e['step']) for e in events]
  assert steps == [('train', 5), ('test', 5), ('train', 10), ('test', 10)]


def _variables(state):
  return jax.device_get((state.params, state.batch_stats, state.opt_state))


# Two float64 runs: the slow tier (the default run's 8-device step is the
# BatchNorm test above).
@pytest.mark.slow
def test_eight_devices_train_the_model_one_device_trains(
    tmp_path, one_device_mesh, eight_device_mesh, enable_x64):
  # 10 steps in float64: the runs differ only by summation order, about
  # 1e-15 (measured; float32 drifts by up to 30% per array, mostly in
  # small bias vectors).
  del enable_x64
  config = tiny_config(num_epochs=2, float64=True)
  one = train.train_and_evaluate(config, str(tmp_path / 'one'),
                                 mesh=one_device_mesh)
  eight = train.train_and_evaluate(config, str(tmp_path / 'eight'),
                                   mesh=eight_device_mesh)
  assert {x.dtype for x in jax.tree.leaves(_variables(one))} == {
      np.dtype('float64'), np.dtype('int32')}  # The optimiser's step count.
  assert max_relative_difference(_variables(eight), _variables(one)) < 1e-6
  # The model moved: the bound is not met by two untrained networks.
  _, init = _init(config, one_device_mesh)
  assert max_relative_difference(one.params, init.params) > 1e-2


# Three float64 runs: the slow tier.
@pytest.mark.slow
def test_resume_on_a_different_device_count(tmp_path, one_device_mesh,
                                            eight_device_mesh, enable_x64):
  del enable_x64  # Float64: see the test above.
  config = tiny_config(num_epochs=2, float64=True)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'),
                                      mesh=one_device_mesh)
  workdir = str(tmp_path / 'resumed')
  first_half = config.copy_and_resolve_references()
  first_half.num_epochs = 1
  saved = jax.device_get(train.train_and_evaluate(
      first_half, workdir, mesh=eight_device_mesh))
  # The 8-device checkpoint restores exactly onto one device...
  restored, meta = _final_params(workdir, config, one_device_mesh)
  assert meta['epoch'] == 1
  for a, b in zip(jax.tree.leaves(saved.params),
                  jax.tree.leaves(restored['params'])):
    assert a.dtype == b.dtype == np.float64
    np.testing.assert_array_equal(a, b)
  # ...and training goes on there, to what one device trains throughout.
  final = train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  assert _final_params(workdir, config, one_device_mesh)[1]['epoch'] == 2
  assert final.params['classifier']['kernel'].sharding.num_devices == 1
  assert not np.array_equal(saved.params['classifier']['kernel'],
                            final.params['classifier']['kernel'])
  assert max_relative_difference(_variables(final),
                                 _variables(straight)) < 1e-6


@pytest.mark.slow  # About 12 s; main.py trains supervised in test_command_lines too.
def test_supervised_mode_trains_a_classifier(tmp_path, one_device_mesh):
  config = tiny_config(mode='supervised', batch_size=100, num_epochs=2,
                       learning_rate_table=((2, 0.1),))
  state = train.train_and_evaluate(config, str(tmp_path),
                                   mesh=one_device_mesh)
  assert state.params['classifier']['kernel'].shape[-1] == 10  # Classes.
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  (head,) = results['heads']
  assert results['mode'] == 'supervised' and head['head'] == 'classifier'
  assert head['test_samples'] == 297  # No rotations: one per image.
  events = [e for e in metrics_lib.read_jsonl(str(tmp_path))
            if e['split'] == 'train']
  assert events[-1]['loss'] < events[0]['loss']


# Both in the slow tier (about 8 s each); random rotations' draws are
# checked in the fast one (test_safety_net.py).
@pytest.mark.parametrize('overrides', [
    pytest.param({'rotation_mode': 'random'}, marks=pytest.mark.slow),
    pytest.param({'rotations': (0, 45, 90, 135, 180, 225, 270, 315)},
                 marks=pytest.mark.slow),
])
def test_pretext_variants_run(overrides, tmp_path, one_device_mesh):
  config = tiny_config(batch_size=100, **overrides)
  state = train.train_and_evaluate(config, str(tmp_path),
                                   mesh=one_device_mesh)
  outputs = len(config.rotations)
  assert state.params['classifier']['kernel'].shape[-1] == outputs
  (event,) = [e for e in metrics_lib.read_jsonl(str(tmp_path))
              if e['split'] == 'test']
  # A count of correct answers over every angle of the 297 test images.
  correct = event['accuracy'] * 297 * outputs
  assert abs(correct - round(correct)) < 1e-6
  with open(tmp_path / 'results.json') as f:
    (head,) = json.load(f)['heads']
  assert head['final_test_accuracy'] == event['accuracy']
  assert head['test_samples'] == 297 * outputs  # Evaluation: every angle.
  assert head['rotations'] == list(config.rotations)


# Three epochs with a poisoned optimiser: the slow tier (the default run
# stops a run whose loss is infinite, test_safety_net.py).
@pytest.mark.slow
def test_parameters_that_diverge_in_the_last_step_are_never_saved(
    tmp_path, monkeypatch):
  """The loss of an epoch's last step is computed before its update: NaN
  parameters from that update must stop the run before its test pass and
  checkpoint (the previous epoch's stays the newest)."""
  steps_per_epoch = 500 // 96
  last_step_of_epoch_2 = 2 * steps_per_epoch - 1  # optax counts from 0.

  def nan_update_at(count_to_poison):
    def init(params):
      del params
      return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
      del params
      poison = jnp.where(count == count_to_poison, jnp.nan, 0.0)
      return jax.tree.map(lambda u: u + poison, updates), count + 1

    return optax.GradientTransformation(init, update)

  real = optim.from_config
  monkeypatch.setattr(train.optim, 'from_config', lambda config, spe: (
      optax.chain(real(config, spe), nan_update_at(last_step_of_epoch_2))))
  workdir = str(tmp_path)
  with pytest.raises(TrainingDiverged, match=r'parameters hold NaN .* after '
                     rf'step {2 * steps_per_epoch} \(epoch 2\)'):
    train.train_and_evaluate(
        tiny_config(num_epochs=3, learning_rate_table=((3, 0.1),),
                    log_every_steps=100),
        workdir, mesh=parallel.make_mesh(jax.devices()[:1]))
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  assert checkpoints.all_steps() == [steps_per_epoch]
  checkpoints.close()
  tests = [e for e in metrics_lib.read_jsonl(workdir) if e['split'] == 'test']
  assert [e['epoch'] for e in tests] == [1]
