"""Behaviours that shape and smoke tests cannot see.

Each test here pins one behaviour that a small, plausible bug breaks while
every shape, parameter count and "it runs" check still passes: which pool a
NIN block uses, whether the config's optimiser settings reach the real
training step, which block an evaluation head reads, exact evaluation over
padded batches, BatchNorm in inference mode during evaluation, fresh random
draws at every step, test-selected best-epoch tracking, and an infinite
loss stopping the run. Every test was checked to fail with its bug planted
in the package source.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import tiny_config
from rotnet_jax import data as data_lib
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import DeviceSource
from rotnet_jax.data import arrays
from rotnet_jax.data import digits
from rotnet_jax.data import transforms
from rotnet_jax.errors import TrainingDiverged
from rotnet_jax.models.nin import NIN
from rotnet_jax.training import loop
from rotnet_jax.training import metrics as metrics_lib
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import steps as steps_lib
from rotnet_jax.training import train
from rotnet_jax.training.steps import TrainState
from rotnet_jax.weights import restore
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import run_files

NUM_TEST_IMAGES = 297  # The digits test split.
ALL_BLOCKS = ('conv1', 'conv2', 'conv3')  # Of the tiny NIN-3.


def _flat(tree) -> np.ndarray:
  """Every leaf of `tree`, raveled and concatenated (float64)."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree.leaves(tree)])


def _normalization(config):
  """The ``normalization`` argument of the steps for `config`."""
  return (tuple(config.mean_rgb), tuple(config.std_rgb),
          models.compute_dtype(config.half_precision))


def _normalized(config, batch):
  """`batch` with its uint8 images normalised, as the steps do first."""
  return dict(batch, image=transforms.normalize(
      jnp.asarray(batch['image']), *_normalization(config)))


def _backbone(spec, variables) -> nnx.Module:
  """The backbone of `spec` holding `variables` (params, batch_stats)."""
  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: models.build_backbone(spec, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, variables['params'], variables['batch_stats'])


def _random_config(**overrides):
  """An evaluation of the random tiny NIN-3 with multlayer heads (its
  fresh BatchNorm statistics kept: no training data needed)."""
  return tiny_config(mode='evaluate', pretrained='random', head='multlayer',
                     blocks=ALL_BLOCKS, random_batch_stats='fresh',
                     **overrides)


@pytest.fixture(scope='module')
def random_backbone():
  """``(config, RestoredBackbone)`` of the randomly initialised tiny NIN-3.

  Restored the way ``pretrained='random'`` evaluations do, once per module
  (initialising a network eagerly compiles dozens of programs); its
  variables are host copies.
  """
  mesh = parallel.make_mesh(jax.devices()[:1])
  config = _random_config()
  backbone = restore.load_backbone(config, mesh)
  return config, restore.RestoredBackbone(
      backbone.spec, jax.device_get(backbone.variables), backbone.origin)


def _restore(workdir, step, like: TrainState):
  """``{'params', 'batch_stats'}`` of checkpoint `step`, shaped like `like`."""
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    restored = checkpoints.restore(step, model={
        'params': like.params, 'batch_stats': like.batch_stats})
  finally:
    checkpoints.close()
  return jax.device_get(restored['model'])


class _BatchAsInputs:
  """A source whose per-step inputs are the batch itself.

  Lets a test feed a hand-made batch (chosen images, chosen mask) to the
  compiled steps of ``steps.compile_steps``.
  """

  resident = None

  def materialize(self, resident, inputs):
    del resident
    return inputs


# ---------------------------------------------------------------------------
# 1. NIN pools.


def _reference_pool(x, kind: str) -> np.ndarray:
  """PyTorch ``MaxPool2d``/``AvgPool2d(3, stride=2, padding=1)`` in numpy.

  Max pads with -inf; average counts the zero padding (``count_include_pad``).
  """
  x = np.asarray(x, np.float64)
  pad = -np.inf if kind == 'max' else 0.0
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad)
  height, width = x.shape[1] // 2, x.shape[2] // 2
  windows = np.stack([padded[:, i:i + 2 * height:2, j:j + 2 * width:2]
                      for i in range(3) for j in range(3)])
  return windows.max(axis=0) if kind == 'max' else windows.sum(axis=0) / 9


def test_nin_block1_max_pools_and_block2_average_pools(random_backbone):
  """Block 1 ends in a 3/2 max-pool, block 2 in a 3/2 average pool.

  Swapping the two keeps every shape and parameter count; here each block's
  output is compared with its own three layers followed by a numpy pool.
  """
  _, backbone = random_backbone
  model = _backbone(backbone.spec, backbone.variables)
  assert isinstance(model, NIN) and len(model.blocks) == 3
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

  @nnx.jit
  def forward(model, x):
    """The model's features, and each block's layers run on their input."""
    _, features = model(x, train=False)
    inputs = (x, features['conv1'], features['conv2'])
    unpooled = []
    for block, y in zip(model.blocks, inputs):
      for layer in block.layers:
        y = layer(y, train=False)
      unpooled.append(y)
    return features, unpooled

  features, (block1, block2, block3) = forward(model, x)
  np.testing.assert_allclose(features['conv1'],
                             _reference_pool(block1, 'max'), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(features['conv2'],
                             _reference_pool(block2, 'avg'), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(features['conv3'], block3, rtol=1e-5, atol=1e-6)
  # The check can fail: on these inputs the two pools disagree by far more
  # than the tolerance.
  for pre in (block1, block2):
    gap = np.abs(_reference_pool(pre, 'max') - _reference_pool(pre, 'avg'))
    assert gap.max() > 1e-3


# ---------------------------------------------------------------------------
# 2. The optimiser of a real run.

# One-step epochs: the training subset is exactly one batch.
_ONE_STEP = dict(num_train_examples=32, batch_size=32, keep_checkpoints=5)


def _one_step_run(workdir, mesh, **overrides):
  """Runs the real driver; returns its final state and initial parameters."""
  config = tiny_config(**_ONE_STEP, **overrides)
  state = train.train_and_evaluate(config, workdir, mesh=mesh)
  # The driver's own initialisation (same program, so a compile-cache hit).
  init = steps_lib.init_state(objectives.RotationPretext(config),
                              optim.from_config(config, 1), config.seed, mesh)
  return state, init


# Three runs: the slow tier (the default run takes three steps of the
# config's optimiser against PyTorch's SGD, test_torch_parity.py).
@pytest.mark.slow
def test_real_runs_apply_the_configs_sgd_and_learning_rate_table(
    tmp_path, one_device_mesh):
  """momentum, nesterov, weight_decay and the rate table reach the step.

  With one-step epochs both runs take their first step from the same
  initialisation on the same batch, so with the same gradient ``g``.
  PyTorch's SGD moves the parameters by ``-lr (g + wd p)`` on a heavy-ball
  first step, whatever the momentum, and by ``-lr (1 + mu) (g + wd p)`` on a
  Nesterov one. A heavy-ball run at lr 1 without weight decay measures
  ``-g`` (and ``-(1 + mu) g`` if ``nesterov`` were lost); the Nesterov run
  must then match its formula. Its table drops the rate to 0 after epoch 1,
  so its epoch 2 must change nothing, which fails when the schedule counts
  epochs in the wrong number of steps.
  """
  heavy_ball, init = _one_step_run(
      str(tmp_path / 'heavy_ball'), one_device_mesh,
      learning_rate_table=((1, 1.0),), momentum=0.7, weight_decay=0.0,
      nesterov=False)
  p = _flat(jax.device_get(init.params))
  gradient = p - _flat(jax.device_get(heavy_ball.params))
  assert np.abs(gradient).max() > 1e-3

  lr, mu, wd = 0.05, 0.5, 0.1
  workdir = str(tmp_path / 'nesterov')
  nesterov, _ = _one_step_run(workdir, one_device_mesh,
                              learning_rate_table=((1, lr), (2, 0.0)),
                              num_epochs=2, momentum=mu, weight_decay=wd,
                              nesterov=True)
  epoch1 = _flat(_restore(workdir, 1, nesterov)['params'])
  epoch2 = _flat(_restore(workdir, 2, nesterov)['params'])
  expected = -lr * (1 + mu) * (gradient + wd * p)
  # The check can fail: weight decay is a visible part of the step.
  assert np.abs(lr * (1 + mu) * wd * p).max() > 0.1 * np.abs(expected).max()
  np.testing.assert_allclose(epoch1 - p, expected, rtol=0,
                             atol=1e-4 * np.abs(expected).max())
  # Epoch 2 runs at rate 0: not one parameter moves.
  np.testing.assert_array_equal(epoch2, epoch1)


def test_frozen_evaluation_optimises_only_heads_and_follows_its_table(
    tmp_path, one_device_mesh):
  """Heads-only optimiser state, and the table's decay in evaluation runs.

  A frozen-backbone evaluation keeps the backbone out of the parameters and
  the optimiser state (the momentum buffers are exactly the heads' size).
  Its rate table ends at 0 after epoch 1, so the heads change in epoch 1
  and not at all in epoch 2.
  """
  config = tiny_config(mode='evaluate', pretrained='random', head='linear',
                       random_batch_stats='fresh',
                       linear_pool_size=2, blocks=('conv2',), num_epochs=2,
                       learning_rate_table=((1, 0.1), (2, 0.0)), **_ONE_STEP)
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  assert set(state.params) == set(state.batch_stats) == {'heads'}
  assert set(state.params['heads']) == {'conv2'}
  head_size = _flat(state.params['heads']).size
  buffers = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert sum(np.size(x) for x in buffers) == head_size

  # The heads' initialisation, as the driver computes it.
  objective = objectives.HeadsOnBackbone(
      config, 10, restore.load_backbone(config, one_device_mesh))
  initial = _flat(jax.jit(
      lambda constants: objective.init(config.seed, constants)[0])(
          objective.constants))
  epoch1 = _flat(_restore(workdir, 1, state)['params'])
  epoch2 = _flat(_restore(workdir, 2, state)['params'])
  assert initial.size == epoch1.size == head_size
  assert np.abs(epoch1 - initial).max() > 1e-4  # Epoch 1 trained at 0.1.
  np.testing.assert_array_equal(epoch2, epoch1)  # Epoch 2 at rate 0.


# ---------------------------------------------------------------------------
# 3. Each head reads its own block.


@pytest.fixture(scope='module')
def random_heads(random_backbone):
  """Multlayer heads on every block of the random tiny NIN-3, initialised.

  Returns:
    ``(config, objective, params, batch_stats)`` (host copies).
  """
  config, backbone = random_backbone
  objective = objectives.HeadsOnBackbone(config, 10, backbone)
  params, batch_stats = jax.device_get(jax.jit(
      lambda constants: objective.init(0, constants))(objective.constants))
  return config, objective, params, batch_stats


def test_each_evaluation_head_reads_the_block_it_is_named_after(random_heads):
  """``conv3``'s head sees conv3's features, not conv2's (same shape)."""
  _, objective, params, batch_stats = random_heads
  assert objective.blocks == ALL_BLOCKS
  x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  batch = {'image': x, 'label': jnp.zeros(4, jnp.int32),
           'mask': jnp.ones(4, jnp.float32)}

  @jax.jit
  def run(params, batch_stats, constants, batch):
    """Every head's logits, and each head applied to chosen features."""
    output = objective.apply(params, batch_stats, constants, batch, 0,
                             train=False)
    _, features = _backbone(objective.network['backbone'], constants)(
        batch['image'], train=False)

    def head_on(block, feature_block):
      head = nnx.merge(objective.head_graphdefs[block],
                       params['heads'][block], batch_stats['heads'][block])
      return head(features[feature_block], train=False)

    pairs = [(b, b) for b in objective.blocks] + [('conv3', 'conv2'),
                                                  ('conv2', 'conv3')]
    return output.logits, {pair: head_on(*pair) for pair in pairs}, features

  logits, applied, features = run(params, batch_stats, objective.constants,
                                  batch)
  assert features['conv2'].shape == features['conv3'].shape
  assert set(logits) == set(ALL_BLOCKS)
  for block in logits:
    np.testing.assert_allclose(logits[block], applied[block, block],
                               rtol=1e-5, atol=1e-5)
  # The check can fail: the other block's features give other logits.
  for block, other in (('conv3', 'conv2'), ('conv2', 'conv3')):
    assert np.abs(applied[block, other] - logits[block]).max() > 1e-2


# ---------------------------------------------------------------------------
# A trained run, shared by the evaluation and best-epoch tests.

_TRAINED_RUN = dict(batch_size=32, num_epochs=2, keep_checkpoints=5,
                    # Epoch 1 learns (about 45% rotation accuracy); the
                    # rate 10 of epoch 2 wrecks the network (chance) while
                    # its parameters stay finite (at 1e3 they do not, and
                    # the run stops as diverged).
                    learning_rate_table=((1, 0.1), (2, 10.0)))


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A two-epoch pretext run whose last epoch is not its best.

  Returns:
    ``(workdir, config, objective, epoch1_state)``; ``epoch1_state`` holds
    the epoch-1 checkpoint's parameters and BatchNorm statistics.
  """
  workdir = str(tmp_path_factory.mktemp('trained'))
  mesh = parallel.make_mesh(jax.devices()[:1])
  config = tiny_config(**_TRAINED_RUN)
  final = train.train_and_evaluate(config, workdir, mesh=mesh)
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  first_step = min(checkpoints.all_steps())
  checkpoints.close()
  epoch1 = _restore(workdir, first_step, final)
  return workdir, config, objectives.RotationPretext(config), TrainState(
      epoch1['params'], epoch1['batch_stats'], None)


def _compiled_steps(config, objective, mesh, source) -> steps_lib.CompiledSteps:
  """``steps.compile_steps`` of `objective` with `source` for both splits."""
  return steps_lib.compile_steps(config, objective, optim.sgd(0.1), mesh,
                                 source, source)


def _reference_sums(config, objective, state, images):
  """Loss sum and correct count of `images`' rotations, run on their own."""
  batch = _normalized(config, {'image': images, 'label': None,
                               'mask': jnp.ones(len(images))})
  inputs, labels, _ = objective.task(batch, 0, train=False)
  model = nnx.merge(objective.graphdef, state.params, state.batch_stats)
  logits, _ = model(inputs, train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
  return jnp.sum(losses), correct


def _reference(config, objective, state, images) -> tuple[float, int]:
  """:func:`_reference_sums`, compiled, as Python numbers."""
  loss, correct = jax.jit(functools.partial(_reference_sums, config,
                                            objective))(state, images)
  return float(loss), int(correct)


# ---------------------------------------------------------------------------
# 4. Exact evaluation over real samples.


@pytest.mark.slow  # Its fixture trains a run: about 14 s.
def test_padded_rows_change_neither_the_loss_nor_the_correct_count(
    trained_run, one_device_mesh):
  """Rows with mask 0 contribute nothing, whatever they hold.

  A batch of 5 real test images and 3 padding rows gives the sums of the 5
  images evaluated alone, and replacing the padding keeps them.
  """
  _, config, objective, state = trained_run
  steps = _compiled_steps(config, objective, one_device_mesh,
                          _BatchAsInputs())
  images, labels = digits.load('test')
  mask = np.asarray([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  real, padding = images[:5], images[5:8]
  loss, correct = _reference(config, objective, state, real)
  # The check can fail: the padding rows would add loss and correct answers.
  pad_loss, pad_correct = _reference(config, objective, state, padding)
  assert pad_loss > 0 and pad_correct > 0

  for fill in (padding, 255 - images[20:23]):
    batch = {'image': np.concatenate([real, fill]), 'label': labels[:8],
             'mask': mask}
    sums = jax.device_get(steps.evaluate(state, batch)['rotation'])
    assert float(sums['count']) == 5 * 4
    assert float(sums['correct']) == correct
    np.testing.assert_allclose(float(sums['loss_sum']), loss, rtol=1e-5)


def test_evaluation_accuracy_does_not_depend_on_the_batch_size(
    trained_run, one_device_mesh):
  """A padded last batch (100) scores exactly like no padding (99).

  Both equal the whole test split evaluated in one pass, sample-weighted.
  """
  _, config, objective, state = trained_run
  summaries = {}
  for batch_size in (99, 100):
    sized = tiny_config(**dict(_TRAINED_RUN, batch_size=batch_size))
    source = data_lib.make_source(sized, 'test', one_device_mesh,
                                  train=False)
    steps = _compiled_steps(config, objective, one_device_mesh, source)
    summaries[batch_size] = loop.evaluate(steps, state, source)['rotation']
  images, _ = digits.load('test')
  loss, correct = _reference(config, objective, state, images)
  # The model is better than chance, so correct answers are not uniform.
  assert int(correct) > 0.3 * 4 * NUM_TEST_IMAGES
  for summary in summaries.values():
    assert summary['count'] == 4 * NUM_TEST_IMAGES
    assert summary['accuracy'] == int(correct) / (4 * NUM_TEST_IMAGES)
    np.testing.assert_allclose(summary['loss'],
                               float(loss) / (4 * NUM_TEST_IMAGES),
                               rtol=1e-5)
  assert summaries[99]['accuracy'] == summaries[100]['accuracy']


# ---------------------------------------------------------------------------
# 5. BatchNorm in inference mode while evaluating.


def test_pretext_evaluation_of_a_sample_ignores_the_rest_of_its_batch(
    trained_run, one_device_mesh):
  """The eval step runs BatchNorm on running averages, not batch statistics.

  One counted image (mask 1) next to two different sets of uncounted
  images: its loss is the same, and equals the image evaluated alone.
  """
  _, config, objective, state = trained_run
  steps = _compiled_steps(config, objective, one_device_mesh,
                          _BatchAsInputs())
  images, labels = digits.load('test')
  mask = np.asarray([1] + [0] * 7, np.float32)
  loss, _ = _reference(config, objective, state, images[:1])
  for rest in (images[1:8], 255 - images[100:107]):
    batch = {'image': np.concatenate([images[:1], rest]),
             'label': labels[:8], 'mask': mask}
    sums = steps.evaluate(state, batch)['rotation']
    np.testing.assert_allclose(float(sums['loss_sum']), loss, rtol=1e-5)


def test_head_evaluation_of_a_sample_ignores_the_rest_of_its_batch(
    random_heads, one_device_mesh):
  """The heads' eval step runs their BatchNorm in inference mode too."""
  config, objective, params, batch_stats = random_heads
  steps = _compiled_steps(config, objective, one_device_mesh,
                          _BatchAsInputs())
  state = TrainState(params, batch_stats, None)
  images, labels = digits.load('test')
  mask = np.asarray([1] + [0] * 7, np.float32)
  losses = []
  for rest in (images[1:8], 255 - images[100:107]):
    batch = {'image': np.concatenate([images[:1], rest]),
             'label': labels[:8], 'mask': mask}
    sums = jax.device_get(steps.evaluate(state, batch))
    losses.append({block: float(s['loss_sum']) for block, s in sums.items()})
  assert set(losses[0]) == set(ALL_BLOCKS)
  for block, loss in losses[0].items():
    np.testing.assert_allclose(losses[1][block], loss, rtol=1e-5)


# ---------------------------------------------------------------------------
# 6. Fresh random draws at every step.


def _marker_offsets_and_flips(images):
  """Each image's crop offset and flip, from one bright pixel's position.

  The source images are black but for (row 10, col 5); after the 4-pixel
  padding and a crop at (dy, dx) it sits at (14 - dy, 9 - dx), or at column
  22 + dx once flipped.
  """
  found = []
  for image in images:
    rows, cols = np.nonzero(image[..., 0])
    assert len(rows) == 1
    flipped = cols[0] >= 22
    dx = cols[0] - 22 if flipped else 9 - cols[0]
    found.append((14 - rows[0], dx, flipped))
  return np.asarray(found)


def test_device_augmentation_changes_between_steps_and_epochs(
    one_device_mesh):
  """Same images, new crops and flips at every step of every epoch."""
  images = np.zeros((64, 32, 32, 3), np.uint8)
  images[:, 10, 5] = 255
  source = DeviceSource(arrays.SplitArrays(images, np.zeros(64, np.int32), 1),
                        mesh=one_device_mesh, batch_size=32, train=True,
                        seed=0)
  materialize = jax.jit(source.materialize)
  draws = {}
  for epoch in (0, 1):
    for step, inputs in enumerate(source.epoch(epoch)):
      batch = materialize(source.resident, inputs)
      draws[epoch, step] = _marker_offsets_and_flips(
          np.asarray(batch['image']))
  assert len(draws) == 4
  keys = sorted(draws)
  for i, a in enumerate(keys):
    for b in keys[i + 1:]:
      # Crop offsets and flips are each drawn anew.
      assert not np.array_equal(draws[a][:, :2], draws[b][:, :2]), (a, b)
      assert not np.array_equal(draws[a][:, 2], draws[b][:, 2]), (a, b)
  # The same step of the same epoch draws the same again.
  again = materialize(source.resident, next(source.epoch(1)))
  np.testing.assert_array_equal(
      _marker_offsets_and_flips(np.asarray(again['image'])), draws[1, 0])


def test_random_rotation_mode_draws_new_angles_at_every_step(
    random_backbone):
  """``rotation_mode='random'``: the angles depend on the global step.

  Checked on the task itself and through the train step, whose loss on one
  batch from one state then differs between steps.
  """
  _, backbone = random_backbone
  config = tiny_config(rotation_mode='random')
  objective = objectives.RotationPretext(config)
  # The random backbone is a pretext network: the same variables fit.
  assert objective.spec == backbone.spec
  images, labels = digits.load('train')
  batch = {'image': images[:64], 'label': labels[:64],
           'mask': np.ones(64, np.float32)}
  labels_at = jax.jit(lambda batch, step: objective.task(
      _normalized(config, batch), step, train=True)[1])
  angles = {step: np.asarray(labels_at(batch, step)) for step in (0, 1, 2)}
  np.testing.assert_array_equal(labels_at(batch, 1), angles[1])
  assert not np.array_equal(angles[0], angles[1])
  assert not np.array_equal(angles[1], angles[2])

  tx = optax.sgd(0.1)
  params = backbone.variables['params']
  state = TrainState(params, backbone.variables['batch_stats'],
                     tx.init(params))
  step_fn = jax.jit(functools.partial(
      steps_lib.train_step, constants=None, objective=objective, tx=tx,
      normalization=_normalization(config)))
  losses = [float(step_fn(state, batch, step)[1]['rotation']['loss_sum'])
            for step in (0, 1, 0)]
  assert losses[0] == losses[2]
  assert losses[0] != losses[1]


# ---------------------------------------------------------------------------
# 7. The test-selected best epoch.


def test_best_epoch_is_the_maximum_not_the_last(tmp_path):
  """``_track_best`` keeps the best accuracy and its epoch, and the last."""
  record = None
  for epoch, accuracy in ((1, 0.30), (2, 0.50), (3, 0.40)):
    record = loop._track_best(  # pylint: disable=protected-access
        record, {'accuracy': accuracy, 'count': 100}, epoch)
  assert record['best_accuracy'] == 0.50 and record['best_epoch'] == 2
  assert record['final_accuracy'] == 0.40 and record['final_epoch'] == 3
  config = tiny_config(num_epochs=3)
  run_files.write_results(str(tmp_path), train.results(
      config, objectives.RotationPretext(config), {'rotation': record}))
  with open(tmp_path / run_files.RESULTS_FILE) as f:
    results = json.load(f)
  (head,) = results['heads']
  assert head['head'] == 'rotation'
  assert head['best_test_accuracy_test_selected'] == 0.50
  assert head['best_epoch_test_selected'] == 2
  assert head['final_test_accuracy'] == 0.40 and head['final_epoch'] == 3
  assert head['test_samples'] == 100
  assert results['complete'] is True


def test_real_run_reports_its_best_evaluated_epoch(trained_run):
  """results.json's best is the maximum of the run's test events.

  The shared run learns in epoch 1 and is wrecked in epoch 2, so the best
  epoch is not the last one.
  """
  workdir = trained_run[0]
  tests = [e for e in metrics_lib.read_jsonl(workdir) if e['split'] == 'test']
  accuracies = [e['accuracy'] for e in tests]
  assert [e['epoch'] for e in tests] == [1, 2]
  assert accuracies[-1] < max(accuracies) - 0.05  # The last is not the best.
  best = tests[int(np.argmax(accuracies))]
  with open(os.path.join(workdir, run_files.RESULTS_FILE)) as f:
    (head,) = json.load(f)['heads']
  assert head['best_test_accuracy_test_selected'] == best['accuracy']
  assert head['best_epoch_test_selected'] == best['epoch'] == 1
  assert head['final_test_accuracy'] == accuracies[-1]
  assert head['final_epoch'] == 2


# ---------------------------------------------------------------------------
# 8. An infinite loss stops the run, as a NaN one does.


@pytest.mark.slow  # About 7 s.
def test_an_infinite_loss_stops_the_run_before_it_is_tested_or_saved(
    tmp_path, monkeypatch, one_device_mesh):
  """A loss of +inf (a probability of 0 in the cross-entropy) with finite
  parameters: the divergence guard must stop the run at the end of its
  epoch, naming the step, before the epoch's test pass and checkpoint.
  A guard that looked for NaN alone would log, test and save on."""
  poisoned_step = 2  # 0-based: the 3rd of the epoch's 5 steps.
  real_compile = steps_lib.compile_steps

  def compile_steps(*args, **kwargs):
    compiled = real_compile(*args, **kwargs)

    def train_fn(state, constants, inputs, step):
      state, sums = compiled.train_fn(state, constants, inputs, step)
      if step == poisoned_step:
        sums = {head: dict(head_sums, loss_sum=jnp.full_like(
            head_sums['loss_sum'], jnp.inf))
                for head, head_sums in sums.items()}
      return state, sums

    return dataclasses.replace(compiled, train_fn=train_fn)

  monkeypatch.setattr(steps_lib, 'compile_steps', compile_steps)
  workdir = str(tmp_path)
  with pytest.raises(TrainingDiverged, match=(
      r'rotation loss is inf at step 3 \(epoch 0.60\)')):
    train.train_and_evaluate(tiny_config(log_every_steps=100), workdir,
                             mesh=one_device_mesh)
  checkpoints = checkpoint_lib.Checkpointer(workdir, read_only=True)
  assert checkpoints.all_steps() == []
  checkpoints.close()
  assert metrics_lib.read_jsonl(workdir) == []  # Nothing logged or tested.
  assert not os.path.exists(os.path.join(workdir, run_files.RESULTS_FILE))
