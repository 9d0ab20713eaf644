"""Every config key, its default, and the checks a config must pass.

Config files in ``configs/`` start from :func:`defaults` and change what
their experiment needs. :func:`validate` runs before any work starts and
rejects unknown keys, wrong types and impossible values with a message
naming the key. The README's "Config" section documents each key.
"""

import difflib
import re

from ml_collections import config_dict

from rotnet_jax.data import PIPELINES
from rotnet_jax.models.heads import HEAD_TYPES
from rotnet_jax.errors import InputError

MODES = ('pretext', 'supervised', 'evaluate')
ROTATION_MODES = ('all', 'random')

# CIFAR-10 per-channel statistics on the 0..255 scale (official code).
CIFAR_MEAN_RGB = (125.3, 123.0, 113.9)
CIFAR_STD_RGB = (63.0, 62.1, 66.7)


def defaults() -> config_dict.ConfigDict:
  """The RotNet CIFAR-10 pretext recipe of the official code."""
  config = config_dict.ConfigDict()
  # 'pretext' (predict rotations), 'supervised' (predict classes), or
  # 'evaluate' (classifier heads on a pretrained backbone, evaluate.py).
  config.mode = 'pretext'
  config.experiment = ''  # Row name in reports (set by rotnet_jax.reproduce).

  # Data.
  config.dataset = 'cifar10'  # TFDS name, image-folder path, or 'digits'.
  config.data_dir = config_dict.placeholder(str)  # TFDS data_dir.
  config.cache_dir = config_dict.placeholder(str)  # Decoded-array cache.
  config.pipeline = 'device'  # 'device' (resident arrays) or 'tfdata'.
  config.train_split = 'train'
  config.test_split = 'test'
  config.image_size = 32
  config.shuffle_buffer_size = 50_000  # tf.data with TFDS only.
  # Train on an evenly spaced subset of this many examples (0: all).
  config.num_train_examples = 0
  # Train on the first K examples of every class (0: all).
  config.examples_per_class = 0
  # Samples per training epoch (0: one pass over the training examples).
  config.epoch_examples = 0
  config.mean_rgb = CIFAR_MEAN_RGB
  config.std_rgb = CIFAR_STD_RGB

  # Optimisation: batch of images before rotation (x4 after).
  config.batch_size = 128
  config.num_epochs = 200
  # (end_epoch, learning rate): epochs [0, 60) at 0.1, [60, 120) at 0.02...
  config.learning_rate_table = ((60, 0.1), (120, 0.02), (160, 0.004),
                                (200, 0.0008))
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4

  config.model = config_dict.ConfigDict()
  config.model.num_blocks = 4
  config.model.width = 1.0

  # Pretext task: label k means a rotation by rotations[k] degrees,
  # counter-clockwise. 'all': every image at every angle in each batch;
  # 'random': one random angle per image.
  config.rotations = (0, 90, 180, 270)
  config.rotation_mode = 'all'

  # Evaluation (mode='evaluate'): heads on frozen pretrained features.
  config.pretrained = config_dict.placeholder(str)  # Workdir or 'random'.
  config.pretrained_step = 0  # Checkpoint step to restore (0: latest).
  config.head = 'multlayer'  # 'multlayer', 'conv_block' or 'linear'.
  config.blocks = ()  # Blocks to train a head on each ((): every block).
  config.finetune = False  # Train the backbone with the head.
  config.linear_pool_size = 6  # Side of the 'linear' head's max-pool.

  config.half_precision = False  # bf16 compute, float32 parameters.
  config.seed = 0

  # Bookkeeping.
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 10
  config.keep_checkpoints = 3
  return config


# The official code's schedules for the classifiers on frozen features.
HEAD_SCHEDULES = {
    'multlayer': dict(num_epochs=50, learning_rate_table=(
        (20, 0.1), (40, 0.02), (45, 0.004), (50, 0.0008))),
    'conv_block': dict(num_epochs=100, learning_rate_table=(
        (35, 0.1), (70, 0.02), (85, 0.004), (100, 0.0008))),
    # No CIFAR-10 protocol in the paper (its linear probes are ImageNet's):
    # the non-linear head's schedule.
    'linear': dict(num_epochs=50, learning_rate_table=(
        (20, 0.1), (40, 0.02), (45, 0.004), (50, 0.0008))),
}


def evaluation_defaults(head: str) -> config_dict.ConfigDict:
  """``mode='evaluate'`` with `head` and its schedule (all blocks)."""
  config = defaults()
  config.mode = 'evaluate'
  config.head = head
  for key, value in HEAD_SCHEDULES[head].items():
    config[key] = value
  config.eval_every_epochs = max(1, config.num_epochs // 10)
  return config


class ConfigError(InputError):
  """A config key is unknown, has the wrong type, or an invalid value."""


def _flatten(config, prefix=''):
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, config_dict.ConfigDict):
      yield from _flatten(value, name + '.')
    else:
      yield name, value


def _field_types() -> dict[str, type]:
  """The type of every key of :func:`defaults`, by dotted name."""
  reference = defaults()
  types = {}
  for name, _ in _flatten(reference):
    node = reference
    *parents, leaf = name.split('.')
    for parent in parents:
      node = node[parent]
    types[name] = node.get_type(leaf)
  return types


def _type_ok(value, expected: type) -> bool:
  if value is None:
    return True  # Optional fields (placeholders) may stay unset.
  if expected is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if expected is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if expected in (tuple, list):
    return isinstance(value, (tuple, list))
  return isinstance(value, expected)


def _unknown_key_message(name: str, known) -> str:
  close = difflib.get_close_matches(name, known, n=3)
  hint = f' Did you mean {", ".join(close)}?' if close else ''
  return f'unknown config key {name!r}.{hint} Valid keys: {", ".join(known)}'


def validate(config) -> None:
  """Checks keys, types and values.

  Raises:
    ConfigError: naming the offending key and what would be valid.
  """
  types = _field_types()
  for name, value in _flatten(config):
    if name not in types:
      raise ConfigError(_unknown_key_message(name, sorted(types)))
    if not _type_ok(value, types[name]):
      raise ConfigError(
          f'config.{name}={value!r} has type {type(value).__name__}, '
          f'expected {types[name].__name__}')

  def require(ok, name, what):
    if not ok:
      raise ConfigError(f'config.{name}={_get(config, name)!r}: {what}')

  require(config.mode in MODES, 'mode', f'must be one of {MODES}')
  require(len(config.rotations) >= 2 and
          len(set(config.rotations)) == len(config.rotations), 'rotations',
          'needs at least two different angles (degrees)')
  require(config.rotation_mode in ROTATION_MODES, 'rotation_mode',
          f'must be one of {ROTATION_MODES}')
  require(config.head in HEAD_TYPES, 'head', f'must be one of {HEAD_TYPES}')
  require(config.mode != 'evaluate' or bool(config.pretrained), 'pretrained',
          "mode='evaluate' needs the pretext run's workdir (or 'random' for "
          'a randomly initialised backbone)')
  require(config.pretrained_step >= 0, 'pretrained_step',
          'must be >= 0 (0: latest checkpoint)')
  require(config.linear_pool_size > 0, 'linear_pool_size', 'must be positive')
  require(config.pipeline in PIPELINES, 'pipeline',
          f'must be one of {PIPELINES}')
  require(bool(config.dataset), 'dataset', 'must name a dataset: a TFDS '
          'name, an image-folder path or "digits"')
  for name in ('batch_size', 'num_epochs', 'image_size', 'log_every_steps',
               'eval_every_epochs', 'checkpoint_every_epochs',
               'keep_checkpoints', 'shuffle_buffer_size'):
    require(_get(config, name) > 0, name, 'must be positive')
  for name in ('num_train_examples', 'examples_per_class', 'epoch_examples'):
    require(_get(config, name) >= 0, name, 'must be >= 0 (0: not used)')
  require(not (config.num_train_examples and config.examples_per_class),
          'examples_per_class', 'cannot be combined with num_train_examples')
  require(config.model.num_blocks >= 3, 'model.num_blocks',
          'the NIN has at least 3 blocks')
  require(config.model.width > 0, 'model.width', 'must be positive')
  require(len(config.mean_rgb) == 3, 'mean_rgb', 'needs 3 values (R, G, B)')
  require(len(config.std_rgb) == 3 and min(config.std_rgb) > 0, 'std_rgb',
          'needs 3 positive values (R, G, B)')
  require(config.weight_decay >= 0, 'weight_decay', 'must be >= 0')
  from rotnet_jax import optim  # pylint: disable=g-import-not-at-top
  try:
    optim.check_learning_rate_table(config.learning_rate_table)
  except ValueError as e:
    raise ConfigError(f'config.learning_rate_table: {e}') from e


def _get(config, name):
  for part in name.split('.'):
    config = config[part]
  return config


_OVERRIDE = re.compile(r'^--config\.([\w.]+)(=|$)')


def check_command_line(argv) -> None:
  """Rejects ``--config.KEY=...`` overrides of keys the schema lacks.

  ml_collections rejects them too, but with a bare ``KeyError`` traceback;
  this gives the key, close matches and the valid keys instead.

  Raises:
    ConfigError: for the first unknown key.
  """
  known = sorted(name for name, _ in _flatten(defaults()))
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    if match and match.group(1) not in known:
      raise ConfigError(_unknown_key_message(match.group(1), known))
