"""Heads on frozen or fine-tuned features, restored from pretext checkpoints."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_config
from rotnet_jax import models
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.models import heads
from rotnet_jax.training import objectives
from rotnet_jax.training import train
from rotnet_jax.weights import restore
from rotnet_jax.workdir import checkpoint as checkpoint_lib


def _options(**overrides):
  """Head options for heads on a full-width NIN-4."""
  spec = models.backbone_spec(tiny_config(**{'model.width': 1.0}).model,
                              image_size=32, num_classes=4)
  return models.head_options(spec, **{'linear_pool_size': 6, **overrides})


def _count(module):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize('head_type,expected', [
    # 8*8*192 -> 200 (no bias), BN, 200 -> 200 (no bias), BN, 200 -> 10.
    ('multlayer', 12288 * 200 + 400 + 200 * 200 + 400 + 2010),
    # 3x3 192->192, 1x1, 1x1 (no bias, BN each), 192 -> 10.
    ('conv_block', 3 * 3 * 192 * 192 + 2 * 192 * 192 + 3 * 384 + 1930),
    # Max-pool to 6x6, BN without parameters, 6*6*192 -> 10.
    ('linear', 6 * 6 * 192 * 10 + 10),
])
def test_head_sizes_and_outputs(head_type, expected):
  head = nnx.eval_shape(lambda: heads.make_head(
      head_type, (8, 8, 192), 10, _options(), rngs=nnx.Rngs(0)))
  assert _count(head) == expected
  graphdef, state = nnx.split(head)
  logits = jax.eval_shape(
      lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
      jax.ShapeDtypeStruct((5, 8, 8, 192), jnp.float32))
  assert logits.shape == (5, 10) and logits.dtype == jnp.float32


def test_head_initialisation_follows_the_official_classifiers():
  conv = nnx.jit(lambda: heads.make_head('conv_block', (8, 8, 96), 10,
                                         _options(), rngs=nnx.Rngs(0)))()
  kernel = np.asarray(conv.block.layers[0].conv.kernel[...])
  assert abs(kernel.std() - math.sqrt(2 / (9 * 192))) < 0.03 * kernel.std()
  mlp = nnx.jit(lambda: heads.make_head('multlayer', (4, 4, 8), 10,
                                        _options(), rngs=nnx.Rngs(0)))()
  hidden = np.asarray(mlp.hidden1.kernel[...])
  assert abs(hidden.std() - math.sqrt(2 / 200)) < 0.05 * hidden.std()
  assert mlp.hidden1.bias is None
  np.testing.assert_array_equal(mlp.output.bias[...], 0.0)
  linear = nnx.eval_shape(lambda: heads.make_head(
      'linear', (8, 8, 4), 10, _options(linear_pool_size=2),
      rngs=nnx.Rngs(0)))
  assert linear.norm.scale is None and linear.norm.bias is None


def test_adaptive_max_pool_matches_pytorch_windows():
  x = np.random.default_rng(0).normal(size=(2, 8, 7, 3)).astype(np.float32)
  pooled = np.asarray(heads.adaptive_max_pool(jnp.asarray(x), 3))
  # PyTorch windows: rows [0,3) [2,6) [5,8); columns [0,3) [2,5) [4,7).
  rows, cols = [(0, 3), (2, 6), (5, 8)], [(0, 3), (2, 5), (4, 7)]
  for i, (r0, r1) in enumerate(rows):
    for j, (c0, c1) in enumerate(cols):
      np.testing.assert_array_equal(pooled[:, i, j],
                                    x[:, r0:r1, c0:c1].max(axis=(1, 2)))


@pytest.fixture
def pretext_run(tiny_pretext_run):
  """A one-epoch tiny RotNet-3 and its workdir (shared: read only)."""
  return tiny_pretext_run


def _eval_config(pretrained, **overrides):
  defaults = dict(mode='evaluate', pretrained=pretrained, batch_size=100,
                  head='multlayer', learning_rate_table=((1, 0.1),))
  defaults.update(overrides)
  return tiny_config(**defaults)


def _restored_backbone(workdir, mesh):
  config = _eval_config(workdir)
  return jax.device_get(restore.load_backbone(config, mesh).variables)


def test_frozen_backbone_is_untouched_and_heads_train(pretext_run, tmp_path,
                                                      one_device_mesh):
  before = _restored_backbone(pretext_run, one_device_mesh)
  state = train.train_and_evaluate(
      _eval_config(pretext_run), str(tmp_path), mesh=one_device_mesh)
  # Params and BatchNorm statistics of the pretext run: bit-identical after
  # an epoch of heads.
  after = _restored_backbone(pretext_run, one_device_mesh)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert set(state.params) == {'heads'}  # Nothing else is optimised.
  assert set(state.params['heads']) == {'conv1', 'conv2', 'conv3'}
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert [h['block'] for h in results['heads']] == ['conv1', 'conv2',
                                                    'conv3']
  events = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert {e['head'] for e in events} == {'conv1', 'conv2', 'conv3'}
  tests = {e['head']: e for e in events if e['split'] == 'test'}
  for head in results['heads']:
    assert head['head_type'] == 'multlayer' and head['test_samples'] == 297
    assert head['pretrained'] == pretext_run
    assert head['best_epoch_test_selected'] == 1
    # The head's own test evaluation: a count of correct answers among the
    # 297 test images.
    assert head['final_test_accuracy'] == tests[head['block']]['accuracy']
    correct = head['final_test_accuracy'] * 297
    assert abs(correct - round(correct)) < 1e-6
  # The evaluation's checkpoint holds the heads alone, not the backbone.
  checkpoints = checkpoint_lib.Checkpointer(str(tmp_path), read_only=True)
  try:
    shapes = checkpoints.model_shapes(checkpoints.latest_step())
  finally:
    checkpoints.close()
  assert shapes and all(k.startswith(('params/heads/', 'batch_stats/heads/'))
                        for k in shapes), sorted(shapes)


@pytest.mark.slow  # Gradients through the NIN, eagerly; an untouched frozen backbone: test_frozen_backbone_is_untouched_and_heads_train.
def test_frozen_features_are_eval_mode_and_gradient_free(pretext_run,
                                                         one_device_mesh):
  config = _eval_config(pretext_run, blocks=('conv2',))
  restored = restore.load_backbone(config, one_device_mesh)
  spec, backbone = restored.spec, restored.variables
  objective = objectives.HeadsOnBackbone(config, 10, restored)
  params, stats = objective.init(0, backbone)
  assert set(params) == {'heads'}
  x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
  batch = {'image': x, 'label': jnp.zeros(6, jnp.int32),
           'mask': jnp.ones(6)}

  def classify(frozen, train_heads):
    return objective.apply(params, stats, frozen, batch, 0,
                           train=train_heads).logits

  def loss(frozen_params):
    frozen = {'params': frozen_params, 'batch_stats': backbone['batch_stats']}
    return jnp.sum(classify(frozen, True)['conv2'])

  grads = jax.grad(loss)(backbone['params'])
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
  # The head sees the backbone's inference-mode features.
  net = models.build_backbone(spec, rngs=nnx.Rngs(0))
  nnx.update(net, nnx.State(backbone['params']),
             nnx.State(backbone['batch_stats']))
  head = nnx.merge(objective.head_graphdefs['conv2'],
                   params['heads']['conv2'], stats['heads']['conv2'])
  eval_features = net(x, train=False)[1]['conv2']
  for train_heads in (False, True):
    # Even while the heads train (their BatchNorm on batch statistics), the
    # frozen backbone runs in inference mode.
    expected = head(eval_features, train=train_heads)
    logits = classify(backbone, train_heads)
    np.testing.assert_allclose(logits['conv2'], expected, rtol=1e-5,
                               atol=1e-5)
  train_mode_features = net(x, train=True)[1]['conv2']
  assert not np.allclose(eval_features, train_mode_features, atol=1e-3)


@pytest.mark.slow  # About 8 s.
def test_finetuning_changes_the_backbone(pretext_run, tmp_path,
                                         one_device_mesh):
  before = _restored_backbone(pretext_run, one_device_mesh)
  config = _eval_config(pretext_run, head='conv_block', blocks=('conv2',),
                        finetune=True)
  state = train.train_and_evaluate(config, str(tmp_path),
                                   mesh=one_device_mesh)
  assert set(state.params) == {'heads', 'backbone'}
  after = jax.device_get({'params': state.params['backbone'],
                          'batch_stats': state.batch_stats['backbone']})
  kernel = ['blocks', 0, 'layers', 0, 'conv', 'kernel']
  mean = ['blocks', 0, 'layers', 0, 'norm', 'mean']

  def get(tree, path):
    for key in path:
      tree = tree[key]
    return np.asarray(tree)

  assert not np.array_equal(get(before['params'], kernel),
                            get(after['params'], kernel))
  assert not np.array_equal(get(before['batch_stats'], mean),
                            get(after['batch_stats'], mean))


# Three evaluation runs: the slow tier (the default run's exact resume is
# the pretext one, test_train.py).
@pytest.mark.slow
def test_evaluation_resumes_exactly(pretext_run, tmp_path, one_device_mesh):
  config = _eval_config(pretext_run, head='linear', linear_pool_size=2,
                        num_epochs=2, blocks=('conv3',),
                        learning_rate_table=((1, 0.1), (2, 0.02)))
  straight = train.train_and_evaluate(config, str(tmp_path / 'a'),
                                             mesh=one_device_mesh)
  half = config.copy_and_resolve_references()
  half.num_epochs = 1
  train.train_and_evaluate(half, str(tmp_path / 'b'),
                               mesh=one_device_mesh)
  resumed = train.train_and_evaluate(config, str(tmp_path / 'b'),
                                            mesh=one_device_mesh)
  for a, b in zip(jax.tree.leaves(jax.device_get(straight.params)),
                  jax.tree.leaves(jax.device_get(resumed.params))):
    np.testing.assert_array_equal(a, b)


# The slow tier: the default run restores random backbones in
# test_protocol.py and test_safety_net.py.
@pytest.mark.slow
def test_random_backbone_needs_no_checkpoint(tmp_path, one_device_mesh):
  config = _eval_config('random', head='linear', linear_pool_size=2,
                        blocks=('conv2',))
  train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  with open(tmp_path / 'results.json') as f:
    (head,) = json.load(f)['heads']
  assert head['pretrained'] == 'random' and head['block'] == 'conv2'


def test_missing_pretrained_workdir(tmp_path, one_device_mesh):
  with pytest.raises(MissingInputError, match=r'no_such_run does not exist'):
    train.train_and_evaluate(_eval_config(str(tmp_path / 'no_such_run')),
                                 str(tmp_path / 'eval'), mesh=one_device_mesh)


def test_pretrained_workdir_without_checkpoints(tmp_path, one_device_mesh):
  (tmp_path / 'empty_run').mkdir()
  with pytest.raises(MissingInputError, match=r'has no checkpoints'):
    train.train_and_evaluate(_eval_config(str(tmp_path / 'empty_run')),
                                 str(tmp_path / 'eval'), mesh=one_device_mesh)


def test_missing_pretrained_step_lists_the_steps(pretext_run, tmp_path,
                                                 one_device_mesh):
  config = _eval_config(pretext_run, pretrained_step=3)
  with pytest.raises(MissingInputError, match=r'pretrained_step=3 .* \[5\]'):
    train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)


def test_architecture_mismatch_names_the_shapes(pretext_run, tmp_path,
                                                one_device_mesh):
  """A shape key set to another value than the weights' is refused before
  anything is written, naming the key and both values."""
  workdir = str(tmp_path / 'run')
  config = _eval_config(pretext_run, **{'model.width': 1 / 16})
  with pytest.raises(InputError, match=(
      r'config\.model\.width=0\.0625: .*width=0\.03125.*'
      r'--config\.model\.width=0\.03125')):
    train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  config = _eval_config(pretext_run, **{'model.num_blocks': 4})
  with pytest.raises(InputError,
                     match=r'config\.model\.num_blocks=4: .*num_blocks=3'):
    train.train_and_evaluate(config, workdir, mesh=one_device_mesh)
  assert not os.path.exists(workdir)


def test_unknown_block_lists_the_valid_ones(pretext_run, tmp_path,
                                            one_device_mesh):
  config = _eval_config(pretext_run, blocks=('conv4',))
  with pytest.raises(InputError, match=r"no \['conv4'\]; valid blocks: "
                     r"\['conv1', 'conv2', 'conv3'\]"):
    train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)


def test_too_many_examples_per_class(pretext_run, tmp_path, one_device_mesh):
  config = _eval_config(pretext_run, examples_per_class=500,
                        num_train_examples=0)
  with pytest.raises(InputError, match=r'examples_per_class=500 is more than '
                     r'the smallest class has \(14\d images of class \d\)'):
    train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh)
  assert not os.path.exists(
      checkpoint_lib.checkpoint_dir(str(tmp_path)))
