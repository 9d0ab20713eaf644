"""The backbone interface: a new backbone is one class and one registry line.

A tiny two-stage ConvNet, defined here and registered under its own name,
runs the RotNet pretext task and then a frozen evaluation with a head on
each of its blocks, through the ordinary driver: nothing else in the
package knows about it.
"""

import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from helpers import tiny_config
from rotnet_jax import models
from rotnet_jax.errors import ConfigError
from rotnet_jax.models.backbone import Backbone
from rotnet_jax.models.layers import ConvBNReLU
from rotnet_jax.training import train


class _TwoStages(nnx.Module):
  """stage1: 3x3 conv-BN-ReLU + 2x2 max-pool; stage2: 3x3 conv-BN-ReLU."""

  def __init__(self, channels, num_classes, *, dtype, rngs):
    self.stage1 = ConvBNReLU(3, channels, 3, dtype=dtype, rngs=rngs)
    self.stage2 = ConvBNReLU(channels, 2 * channels, 3, dtype=dtype,
                             rngs=rngs)
    self.classifier = nnx.Linear(2 * channels, num_classes, dtype=dtype,
                                 rngs=rngs)

  def __call__(self, x, *, train, up_to=None):
    features = {'stage1': nnx.max_pool(self.stage1(x, train=train), (2, 2),
                                       strides=(2, 2))}
    if up_to == 'stage1':
      return None, features
    features['stage2'] = self.stage2(features['stage1'], train=train)
    if up_to == 'stage2':
      return None, features
    logits = self.classifier(jnp.mean(features['stage2'], axis=(1, 2)))
    return logits.astype(jnp.float32), features


class _TwoStagesBackbone(Backbone):
  name = 'two_stages'

  def spec(self, model_config, *, image_size, num_classes):
    return {'name': self.name, 'channels': max(2, int(8 * model_config.width)),
            'num_classes': num_classes, 'image_size': image_size}

  def check_config(self, model_config):
    if model_config.width > 4:
      raise ConfigError('config.model.width: two_stages is at most 4 wide')

  def block_names(self, spec):
    return ('stage1', 'stage2')

  def build(self, spec, *, dtype, rngs):
    return _TwoStages(spec['channels'], spec['num_classes'], dtype=dtype,
                      rngs=rngs)

  def head_block(self, spec, in_channels, *, kernel_init, dtype, rngs):
    channels = spec['channels']
    return ConvBNReLU(in_channels, channels, 3, dtype=dtype,
                      kernel_init=kernel_init(3, channels),
                      rngs=rngs), channels


@pytest.fixture
def two_stages(monkeypatch):
  monkeypatch.setitem(models.BACKBONES, 'two_stages', _TwoStagesBackbone())
  return 'two_stages'


def _config(**overrides):
  return tiny_config(batch_size=100, **{'model.name': 'two_stages',
                                        **overrides})


# Four runs: the slow tier (the default run checks the registry below).
@pytest.mark.slow
def test_a_registered_backbone_trains_and_is_evaluated(two_stages, tmp_path,
                                                       one_device_mesh):
  del two_stages
  pretext = str(tmp_path / 'pretext')
  state = train.train_and_evaluate(_config(), pretext, mesh=one_device_mesh)
  assert set(state.params) == {'stage1', 'stage2', 'classifier'}
  assert state.params['classifier']['kernel'].shape == (4, 4)  # 2x2 wide.
  with open(tmp_path / 'pretext' / 'config.json') as f:
    assert json.load(f)['network']['backbone']['name'] == 'two_stages'

  for head, blocks in (('conv_block', ('stage2',)), ('multlayer', ())):
    workdir = tmp_path / head
    state = train.train_and_evaluate(
        _config(mode='evaluate', pretrained=pretext, head=head,
                blocks=blocks), str(workdir), mesh=one_device_mesh)
    expected = list(blocks or ('stage1', 'stage2'))
    assert sorted(state.params['heads']) == expected
    with open(workdir / 'results.json') as f:
      heads = json.load(f)['heads']
    assert [h['block'] for h in heads] == expected
    assert all(h['test_samples'] == 297 for h in heads)
  # The conv head is one more block of the backbone's own kind.
  conv_head = train.train_and_evaluate(
      _config(mode='evaluate', pretrained=pretext, head='conv_block',
              blocks=('stage1',)), str(tmp_path / 'conv_stage1'),
      mesh=one_device_mesh).params['heads']['stage1']
  assert conv_head['block']['conv']['kernel'].shape == (3, 3, 2, 2)


def test_registry_checks_name_blocks_and_the_backbones_own_rules(
    two_stages, tmp_path, one_device_mesh):
  del two_stages
  with pytest.raises(ConfigError, match=r"model.name='resnet': no such "
                     r"backbone; valid: \('nin', 'alexnet', 'two_stages'\)"):
    train.train_and_evaluate(_config(**{'model.name': 'resnet'}),
                             str(tmp_path), mesh=one_device_mesh)
  with pytest.raises(ConfigError, match=r"no \['conv2'\]; valid blocks: "
                     r"\['stage1', 'stage2'\]"):
    train.train_and_evaluate(
        _config(mode='evaluate', pretrained='random', blocks=('conv2',)),
        str(tmp_path), mesh=one_device_mesh)
  with pytest.raises(ConfigError, match='at most 4 wide'):
    train.train_and_evaluate(_config(**{'model.width': 8.0}), str(tmp_path),
                             mesh=one_device_mesh)
  assert not (tmp_path / 'checkpoints').exists()


def test_feature_shapes_come_from_the_backbone(two_stages):
  del two_stages
  spec = models.backbone_spec(_config().model, image_size=32, num_classes=4)
  assert models.feature_shapes(spec) == {'stage1': (16, 16, 2),
                                         'stage2': (16, 16, 4)}
  nin_spec = models.backbone_spec(tiny_config().model, image_size=32,
                                  num_classes=4)
  assert models.block_names(nin_spec) == ('conv1', 'conv2', 'conv3')
  assert models.feature_shapes(nin_spec)['conv1'] == (16, 16, 3)
  # Shapes only: the variables are never materialised.
  abstract = models.abstract_variables(spec)
  assert all(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves(abstract))
  assert abstract['params']['classifier']['kernel'].shape == (4, 4)
