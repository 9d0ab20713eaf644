"""Config schema: shipped configs are valid; bad keys, types, values fail."""

import importlib.util
import os
import subprocess
import sys

import pytest
from ml_collections import config_dict

import helpers
from helpers import REPO_ROOT
from rotnet_jax import config_schema
from rotnet_jax.config_schema import ConfigError
from rotnet_jax.training import svm


def _load_config_file(name):
  path = os.path.join(REPO_ROOT, 'configs', name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('name', sorted(
    f for f in os.listdir(os.path.join(REPO_ROOT, 'configs'))
    if f.endswith('.py')))
def test_shipped_configs_are_valid(name):
  config = _load_config_file(name)
  if 'benchmark' in config:  # The linear-SVM settings, not a run.
    svm.check_settings(config)
    return
  if config.mode in ('evaluate', 'transfer') and not config.pretrained:
    # Evaluation and transfer configs get the pretext workdir on the
    # command line.
    with pytest.raises(ConfigError, match=f"pretrained=None: mode="
                       f"'{config.mode}' needs the pretext run's workdir"):
      config_schema.validate(config)
    config.pretrained = '/a/pretext/workdir'
  config_schema.validate(config)


def test_cifar_config_is_the_official_recipe():
  config = _load_config_file('cifar.py')
  assert config.num_epochs == 200 and config.batch_size == 128
  assert config.learning_rate_table == ((60, 0.1), (120, 0.02), (160, 0.004),
                                        (200, 0.0008))
  assert (config.momentum, config.nesterov, config.weight_decay) == (
      0.9, True, 5e-4)
  assert (config.model.num_blocks, config.model.width) == (4, 1.0)


def _with(**values):
  config = config_schema.defaults().to_dict()
  config.update(values)
  return config_dict.ConfigDict(config)


def test_unknown_key_is_named_with_a_suggestion():
  with pytest.raises(ConfigError, match=r"'num_epoch'.*Did you mean "
                     r"num_epochs"):
    config_schema.validate(_with(num_epoch=3))
  config = config_schema.defaults().to_dict()
  config['model']['widht'] = 0.5
  with pytest.raises(ConfigError, match="'model.widht'"):
    config_schema.validate(config_dict.ConfigDict(config))


def test_the_defaults_are_locked_and_typed_by_ml_collections():
  # A config file built on defaults() cannot add a key or change a type.
  config = config_schema.defaults()
  with pytest.raises(AttributeError, match='num_epoch'):
    config.num_epoch = 3
  with pytest.raises(TypeError, match='num_epochs'):
    config.num_epochs = 'ten'
  config.weight_decay = 0  # An int for a float is converted.
  assert isinstance(config.weight_decay, float)


@pytest.mark.parametrize('key,value,expected', [
    ('num_epochs', 'ten', 'num_epochs.*expected int'),
    ('batch_size', 12.5, 'batch_size.*expected int'),
    ('half_precision', 'yes', 'half_precision.*expected bool'),
    ('learning_rate_table', 0.1, 'learning_rate_table.*expected tuple'),
])
def test_wrong_types_are_named(key, value, expected):
  with pytest.raises(ConfigError, match=expected):
    config_schema.validate(_with(**{key: value}))


@pytest.mark.parametrize('key,value,expected', [
    ('pipeline', 'gpu', r"pipeline='gpu'.*\('device', 'tfdata'\)"),
    ('batch_size', 0, 'batch_size=0: must be an integer >= 1'),
    ('learning_rate_table', ((60, 0.1), (30, 0.01)), 'increasing'),
    ('mean_rgb', (1.0, 2.0), 'mean_rgb'),
    ('num_train_examples', -1, 'num_train_examples'),
])
def test_impossible_values_are_named(key, value, expected):
  with pytest.raises(ConfigError, match=expected):
    config_schema.validate(_with(**{key: value}))


def test_ints_are_accepted_for_floats():
  config_schema.validate(_with(weight_decay=0))


def _main(*args):
  env = helpers.one_device_env()
  return subprocess.run(
      [sys.executable, 'main.py', '--config=configs/quick.py',
       '--workdir=/nonexistent/never/written', *args], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=300, env=env)


def test_command_line_unknown_key_fails_with_its_name():
  result = _main('--config.num_epoch=3')
  assert result.returncode == 2
  assert "unknown config key 'num_epoch'" in result.stderr
  assert 'num_epochs' in result.stderr
  assert 'Traceback' not in result.stderr


def test_command_line_wrong_type_fails_with_its_name():
  result = _main('--config.num_epochs=ten')
  assert result.returncode != 0
  assert ('flag --config.num_epochs=ten: invalid literal for int()'
          in result.stderr)


def test_command_line_overrides_parse(tmp_path, monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  quick = os.path.join(REPO_ROOT, 'configs', 'quick.py')
  argv = ['prog', f'--config={quick}',
          '--config.learning_rate_table=((2, 0.5), (4, 0.1))',
          '--config.model.width=0.5', f'--config.data_dir={tmp_path}']
  # config_flags finds the override flags in sys.argv when defined.
  monkeypatch.setattr(sys, 'argv', argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values,
                                  lock_config=True)
  flag_values(argv)
  config = flag_values.config
  assert config.learning_rate_table == ((2, 0.5), (4, 0.1))
  assert config.model.width == 0.5 and config.data_dir == str(tmp_path)
  config_schema.validate(config)


def test_evaluation_shape_keys_are_unset_but_typed():
  config = _load_config_file('eval_linear.py')
  for key, expected in (('image_size', int), ('model.name', str),
                        ('model.num_blocks', int), ('model.width', float)):
    *parents, leaf = key.split('.')
    node = config.model if parents else config
    assert node[leaf] is None and node.get_type(leaf) is expected, key
  # Typed: a value of the wrong kind is refused, as for any other key.
  with pytest.raises(TypeError, match='image_size'):
    config.image_size = 'big'
  config.model.width = 1  # An int for a float is converted.
  assert isinstance(config.model.width, float)
  # Checking keeps an unset key typed (the command line still applies).
  config.pretrained = '/a/pretext/workdir'
  checked = config_schema.validate(config)
  assert checked.image_size is None and checked.get_type('image_size') is int
  with pytest.raises(TypeError, match='image_size'):
    checked.image_size = 'big'


def test_command_line_sets_an_evaluation_shape_key(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO_ROOT, 'configs', 'imagenet_linear_probes.py')
  argv = ['prog', f'--config={path}', '--config.image_size=64',
          '--config.model.name=alexnet', '--config.model.width=1']
  monkeypatch.setattr(sys, 'argv', argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values,
                                  lock_config=True)
  flag_values(argv)
  config = flag_values.config
  assert (config.image_size, config.model.name, config.model.width,
          config.model.num_blocks) == (64, 'alexnet', 1.0, None)


def _random_evaluation(**shape):
  config = _load_config_file('eval_conv_random.py')
  config.update_from_flattened_dict(shape)
  return config


def test_a_random_backbone_has_the_shape_of_the_named_backbone(
    one_device_mesh):
  # pylint: disable=g-import-not-at-top
  import jax
  from rotnet_jax import models
  from rotnet_jax.training import validation
  from rotnet_jax.weights import restore
  # pylint: enable=g-import-not-at-top
  config = validation.check_config(_random_evaluation(**{
      'model.name': 'alexnet', 'model.width': 1 / 16, 'image_size': 64,
      'random_batch_stats': 'fresh'}))
  # AlexNet's 5 blocks, not the NIN defaults' 4.
  assert (config.model.name, config.model.num_blocks, config.model.width,
          config.image_size) == ('alexnet', 5, 1 / 16, 64)
  # The random backbone the evaluation builds, traced (not compiled).
  built = {}

  def build():
    backbone = restore.load_backbone(config, one_device_mesh)
    built['spec'] = backbone.spec
    return backbone.variables

  variables = jax.eval_shape(build)
  # The network an AlexNet pretext run of that shape trains.
  pretext = _load_config_file('imagenet_rotnet_alexnet.py')
  pretext.model.width = 1 / 16
  expected = models.backbone_spec(pretext.model, image_size=64,
                                  num_classes=4)
  assert built['spec'] == expected
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  assert shapes(variables) == shapes(models.abstract_variables(expected))
  # The NIN default stays the default.
  config = validation.check_config(_random_evaluation())
  assert (config.model.name, config.model.num_blocks, config.model.width,
          config.image_size) == ('nin', 4, 1.0, 32)


def test_a_random_backbone_takes_its_own_default_image_size(monkeypatch):
  # pylint: disable=g-import-not-at-top
  from rotnet_jax import models
  from rotnet_jax.training import validation
  # pylint: enable=g-import-not-at-top
  alexnet = models.get_backbone('alexnet')
  assert alexnet.default_image_size == 224
  config = validation.check_config(
      _random_evaluation(**{'model.name': 'alexnet'}))
  assert (config.image_size, config.model.num_blocks) == (224, 5)
  # A default the backbone refuses: set the size, says the one line.
  monkeypatch.setattr(alexnet, 'default_image_size', 32)
  with pytest.raises(ConfigError, match=r'config.image_size is unset.*'
                     r"pretrained='random'.*too small for AlexNet.*set "
                     r'--config.image_size'):
    validation.check_config(_random_evaluation(**{'model.name': 'alexnet'}))


@pytest.mark.parametrize('env,expected', [
    ({}, False),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '4'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1'}, True),
])
def test_multihost_environment_detection(env, expected, monkeypatch):
  from rotnet_jax import parallel  # pylint: disable=g-import-not-at-top
  for name in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
               'JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert parallel.multihost_environment() is expected
