"""Protocol details of the official code, each a config value.

BatchNorm scale init, the heads' schedules and evaluation every epoch, the
paper's own pretext schedule, the random-init baseline's BatchNorm
statistics, and evaluation taking the backbone's shape from the weights.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import REPO_ROOT
from helpers import tiny_config
from rotnet_jax import config_schema
from rotnet_jax import data as data_lib
from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import transforms
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.training import objectives
from rotnet_jax.training import optim
from rotnet_jax.training import train
from rotnet_jax.training import validation
from rotnet_jax.weights import restore


def _batch_norm_scales(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat
          if 'norm' in jax.tree_util.keystr(p) and
          jax.tree_util.keystr(p).endswith("['scale']")}


def _others(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat
          if not jax.tree_util.keystr(p).endswith("['scale']")}


def test_batch_norm_scales_start_as_the_config_says():
  uniform = objectives.RotationPretext(
      tiny_config(**{'model.bn_scale_init': 'uniform'})).init(0, None)[0]
  ones = objectives.RotationPretext(
      tiny_config(**{'model.bn_scale_init': 'ones'})).init(0, None)[0]
  assert config_schema.defaults().model.bn_scale_init == 'uniform'
  assert tiny_config().model.bn_scale_init == 'ones'  # For the tests' sake.
  drawn = _batch_norm_scales(uniform)
  assert len(drawn) == 9  # Three blocks of three conv-BN-ReLU.
  values = np.concatenate(list(drawn.values()))
  assert values.min() >= 0 and values.max() < 1
  assert 0.35 < values.mean() < 0.65 and values.std() > 0.2  # U(0, 1).
  # Every layer draws its own values.
  assert len({v.tobytes() for v in drawn.values()}) == len(drawn)
  assert all(np.all(v == 1) for v in _batch_norm_scales(ones).values())
  # Nothing else changes.
  for (name, a), b in zip(_others(uniform).items(), _others(ones).values()):
    np.testing.assert_array_equal(a, b, err_msg=name)


def test_heads_follow_the_official_schedules_and_test_every_epoch():
  multlayer = config_schema.evaluation_defaults('multlayer')
  assert multlayer.num_epochs == 100
  rates = optim.epoch_table_schedule(multlayer.learning_rate_table, 1)
  assert [float(rates(e)) for e in (0, 19, 20, 44, 45, 50, 99)] == pytest.approx(
      [0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008, 0.0008])
  conv = config_schema.evaluation_defaults('conv_block')
  assert conv.num_epochs == 100
  assert conv.learning_rate_table == ((35, 0.1), (70, 0.02), (85, 0.004),
                                      (100, 0.0008))
  for head in ('multlayer', 'conv_block', 'linear'):
    assert config_schema.evaluation_defaults(head).eval_every_epochs == 1


def _load_config_file(name):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO_ROOT, 'configs', name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_paper_schedule_config():
  config = _load_config_file('cifar_paper_schedule.py')
  official = _load_config_file('cifar.py')
  assert config.num_epochs == 100
  rates = optim.epoch_table_schedule(config.learning_rate_table, 1)
  rate = [float(rates(e)) for e in range(100)]
  # x0.2 after epochs 30, 60 and 80.
  assert rate[0] == rate[29] == pytest.approx(0.1)
  for boundary in (30, 60, 80):
    assert rate[boundary] == pytest.approx(0.2 * rate[boundary - 1])
  differ = {k for k, v in config_schema.flatten(config).items()
            if config_schema.flatten(official)[k] != v}
  assert differ == {'num_epochs', 'learning_rate_table'}


# Evaluation reads the backbone's shape from the weights.


@pytest.fixture
def pretext_run(tiny_pretext_run):
  """A one-epoch tiny RotNet-3 (width 1/32; shared: read only)."""
  return tiny_pretext_run


def _evaluation(pretrained, **overrides):
  config = config_schema.evaluation_defaults('multlayer')
  config.update_from_flattened_dict(dict(
      dataset='digits', num_train_examples=500, batch_size=100,
      num_epochs=2, learning_rate_table=((2, 0.1),), pretrained=pretrained,
      blocks=('conv2',), **overrides))
  return config


def test_evaluation_takes_the_shape_from_the_checkpoint(pretext_run,
                                                        tmp_path):
  config = _evaluation(pretext_run)
  assert config.model.num_blocks is None and config.image_size is None
  train.train_and_evaluate(config, str(tmp_path),
                           mesh=parallel.make_mesh(jax.devices()[:1]))
  with open(tmp_path / 'config.json') as f:
    saved = json.load(f)
  assert (saved['model']['name'], saved['model']['num_blocks'],
          saved['model']['width'], saved['image_size']) == ('nin', 3, 1 / 32,
                                                            32)
  # The head is tested after each of its 2 epochs.
  with open(tmp_path / 'metrics.jsonl') as f:
    tests = [json.loads(l) for l in f if '"test"' in l]
  assert [e['epoch'] for e in tests] == [1, 2]


def test_an_explicit_shape_must_match_the_checkpoint(pretext_run, tmp_path):
  config = _evaluation(pretext_run, **{'model.num_blocks': 4})
  with pytest.raises(InputError, match=r'num_blocks.*3'):
    train.train_and_evaluate(config, str(tmp_path / 'run'),
                             mesh=parallel.make_mesh(jax.devices()[:1]))
  assert not os.path.exists(tmp_path / 'run')
  # The same value as the checkpoint is fine.
  config = _evaluation(pretext_run, **{'model.num_blocks': 3})
  assert validation.check_config(config).model.width == 1 / 32


def test_weights_still_to_come_leave_the_shape_for_later(tmp_path):
  config = _evaluation(str(tmp_path / 'not_yet'))
  # A reproduction table checks every job before its pretext runs exist.
  checked = validation.check_config(config)
  assert checked.model.num_blocks is None
  with pytest.raises(MissingInputError, match='not_yet'):
    validation.check_run(config, str(tmp_path / 'run'))
  # A random backbone takes the pretext defaults.
  random = validation.check_config(_evaluation('random'))
  assert (random.model.num_blocks, random.model.width,
          random.image_size) == (4, 1.0, 32)


# The random-init baseline's BatchNorm statistics.


def _random_backbone(protocol, mesh):
  config = tiny_config(mode='evaluate', pretrained='random', batch_size=100,
                       random_batch_stats=protocol,
                       **{'model.num_blocks': 4, 'model.width': 1 / 8})
  config = validation.check_config(config)
  source = data_lib.make_source(config, 'train', mesh, train=True)
  return config, source, restore.load_backbone(config, mesh, source)


def _features(backbone, images, *, train_mode):
  graphdef = models.backbone_graphdef(backbone.spec, jnp.float32)
  model = nnx.merge(graphdef, backbone.variables['params'],
                    backbone.variables['batch_stats'])
  return model(images, train=train_mode)[1]


# Both protocols: the slow tier (the default run restores random backbones
# in test_safety_net.py and test_config.py).
@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['reestimated', 'fresh'])
def test_random_backbone_batch_statistics(protocol, one_device_mesh):
  config, source, backbone = _random_backbone(protocol, one_device_mesh)
  assert backbone.origin['random_batch_stats'] == protocol
  stats = jax.device_get(backbone.variables['batch_stats'])
  first = stats['blocks'][0]['layers'][0]['norm']
  # The training images the statistics were measured on.
  images = jnp.concatenate([
      transforms.normalize(b['image'], tuple(config.mean_rgb),
                           tuple(config.std_rgb), jnp.float32)
      for b in _source_batches(source)])
  inference = _features(backbone, images, train_mode=False)
  training = _features(backbone, images, train_mode=True)
  # How far inference-mode features are from what BatchNorm on the batch's
  # own statistics gives, relative to the features' size, per block.
  gaps = {b: float(jnp.linalg.norm(inference[b] - training[b]) /
                   jnp.linalg.norm(training[b])) for b in training}
  if protocol == 'fresh':
    np.testing.assert_array_equal(first['mean'], 0)
    np.testing.assert_array_equal(first['var'], 1)
    # Statistics 0/1 put the deepest features orders of magnitude off.
    scale = float(jnp.linalg.norm(inference['conv4']) /
                  jnp.linalg.norm(training['conv4']))
    assert not 1e-2 < scale < 1e2, scale
    return
  assert backbone.origin['random_batch_stats_images'] == 500 - 500 % 100
  # Layer 1 sees raw images: its statistics are the exact mean and
  # variance of its convolution's outputs over the images used.
  kernel = jax.device_get(
      backbone.variables['params'])['blocks'][0]['layers'][0]['conv'][
          'kernel']
  outputs = jax.lax.conv_general_dilated(
      images, kernel, (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision='highest')
  outputs = np.asarray(outputs, np.float64).reshape(-1, kernel.shape[-1])
  np.testing.assert_allclose(first['mean'], outputs.mean(0), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(first['var'], outputs.var(0), rtol=1e-4)
  # Every block: inference mode now behaves like training mode.
  assert max(gaps.values()) < 0.01, gaps


def _source_batches(source):
  materialize = jax.jit(source.materialize)
  return [jax.device_get(materialize(source.resident, inputs))
          for inputs in source.epoch(0)]
