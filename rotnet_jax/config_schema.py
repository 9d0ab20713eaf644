"""Every config key, its default, and the value rules a config must pass.

Config files in ``configs/`` start from :func:`defaults` and change what
their experiment needs. The defaults are a *locked* ``ConfigDict``: it is
ml_collections that rejects an unknown key or a value of the wrong type,
whether a config file sets it or the command line
(``--config.num_epochs=10``) does. This module adds only what
ml_collections cannot know: the valid values and ranges of each key and
the rules between keys (:func:`validate`). It sits below the data and model
layers and imports neither; the registries (backbones, heads) check their
own names (``rotnet_jax.validation`` runs both). The README's "Config"
section documents each key.
"""

import difflib
from typing import Any

from ml_collections import config_dict

from rotnet_jax.errors import ConfigError

MODES = ('pretext', 'supervised', 'evaluate')
ROTATION_MODES = ('all', 'random')
PIPELINES = ('device', 'tfdata')

# CIFAR-10 per-channel statistics on the 0..255 scale (official code).
CIFAR_MEAN_RGB = (125.3, 123.0, 113.9)
CIFAR_STD_RGB = (63.0, 62.1, 66.7)

# Config keys that change what a resumed run computes. Changing one of them
# between runs in the same workdir is allowed (e.g. a longer schedule) but
# logged as a warning, since the result is no longer one consistent run.
TRAJECTORY_KEYS = (
    'dataset', 'batch_size', 'seed', 'learning_rate_table', 'momentum',
    'nesterov', 'weight_decay', 'num_train_examples', 'examples_per_class',
    'epoch_examples', 'half_precision', 'rotations', 'rotation_mode',
    'pipeline')


def defaults() -> config_dict.ConfigDict:
  """The RotNet CIFAR-10 pretext recipe of the official code (locked)."""
  config = config_dict.ConfigDict()
  # 'pretext' (predict rotations), 'supervised' (predict classes), or
  # 'evaluate' (classifier heads on a pretrained backbone).
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

  # The backbone: a name of the registry in rotnet_jax/models/__init__.py
  # and its shape.
  config.model = config_dict.ConfigDict()
  config.model.name = 'nin'
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
  config.lock()
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
  config.update(HEAD_SCHEDULES[head])
  config.eval_every_epochs = max(1, config.num_epochs // 10)
  return config


def flatten(config) -> dict[str, Any]:
  """``{'model.width': 0.5, ...}``: every leaf of `config` by dotted name."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, (config_dict.ConfigDict, dict)):
      flat.update({f'{key}.{k}': v for k, v in flatten(value).items()})
    else:
      flat[key] = value
  return flat


def conform(config) -> config_dict.ConfigDict:
  """`config` as a locked, typed config of this schema.

  A config built on :func:`defaults` already is one. Any other mapping (a
  config file that builds its own ``ConfigDict``, a dict) is applied onto
  the defaults with ml_collections' own dotted-key update, which rejects
  unknown keys and wrong types; its error is reworded to name the key.

  Raises:
    ConfigError: an unknown key (with close matches) or a wrong type.
  """
  result = defaults()
  known = flatten(result)
  for name, value in flatten(config).items():
    if name not in known:
      raise unknown_key_error(name)
    try:
      result.update_from_flattened_dict({name: value})
    except TypeError as e:
      *parents, leaf = name.split('.')
      node = result
      for parent in parents:
        node = node[parent]
      raise ConfigError(
          f'config.{name}={value!r} has type {type(value).__name__}, '
          f'expected {node.get_type(leaf).__name__}') from e
  return result


def unknown_key_error(name: str) -> ConfigError:
  """The error for a key the schema lacks, with close matches."""
  known = sorted(flatten(defaults()))
  close = difflib.get_close_matches(name, known, n=3)
  hint = f' Did you mean {", ".join(close)}?' if close else ''
  return ConfigError(f'unknown config key {name!r}.{hint} Valid keys: '
                     f'{", ".join(known)}')


def validate(config) -> None:
  """Checks that every value is in range and the keys agree with each other.

  Raises:
    ConfigError: naming the offending key and what would be valid.
  """
  config = conform(config)

  def require(ok, name, what):
    if not ok:
      raise ConfigError(f'config.{name}={flatten(config)[name]!r}: {what}')

  require(config.mode in MODES, 'mode', f'must be one of {MODES}')
  require(len(config.rotations) >= 2 and
          len(set(config.rotations)) == len(config.rotations), 'rotations',
          'needs at least two different angles (degrees)')
  require(config.rotation_mode in ROTATION_MODES, 'rotation_mode',
          f'must be one of {ROTATION_MODES}')
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
    require(config[name] > 0, name, 'must be positive')
  for name in ('num_train_examples', 'examples_per_class', 'epoch_examples'):
    require(config[name] >= 0, name, 'must be >= 0 (0: not used)')
  require(not (config.num_train_examples and config.examples_per_class),
          'examples_per_class', 'cannot be combined with num_train_examples')
  require(config.model.width > 0, 'model.width', 'must be positive')
  require(len(config.mean_rgb) == 3, 'mean_rgb', 'needs 3 values (R, G, B)')
  require(len(config.std_rgb) == 3 and min(config.std_rgb) > 0, 'std_rgb',
          'needs 3 positive values (R, G, B)')
  require(config.weight_decay >= 0, 'weight_decay', 'must be >= 0')
  check_learning_rate_table(config.learning_rate_table)


def check_learning_rate_table(table) -> None:
  """((end_epoch, lr), ...) with positive, increasing ends and lr >= 0."""
  if not table or any(len(row) != 2 for row in table):
    raise ConfigError('config.learning_rate_table must be a non-empty '
                      f'sequence of (end_epoch, lr) pairs, got {table!r}')
  ends = [row[0] for row in table]
  if any(e <= 0 for e in ends) or any(b <= a for a, b in zip(ends, ends[1:])):
    raise ConfigError('config.learning_rate_table: end epochs must be '
                      f'positive and increasing, got {ends}')
  if any(row[1] < 0 for row in table):
    raise ConfigError('config.learning_rate_table: learning rates must be '
                      f'>= 0, got {table!r}')


def trajectory_changes(saved: dict[str, Any], current: dict[str, Any]
                       ) -> list[str]:
  """Keys of :data:`TRAJECTORY_KEYS` whose value differs between two
  resolved configs (as saved in a checkpoint and as now)."""
  return [k for k in TRAJECTORY_KEYS
          if k in saved and saved[k] != current.get(k)]
