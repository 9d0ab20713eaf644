"""Every config key, its default, and the value rules a config must pass.

Config files in ``configs/`` start from :func:`defaults` and change what
their experiment needs. The defaults are a *locked* ``ConfigDict``: it is
ml_collections that rejects an unknown key or a value of the wrong type,
whether a config file sets it or the command line
(``--config.num_epochs=10``) does. This module adds only what
ml_collections cannot know: the valid values and ranges of each key and
the rules between keys (:func:`validate`). It sits below the data and model
layers and imports neither; the registries (backbones, heads) check their
own names (``rotnet_jax.training.validation`` runs both). The README's "Config"
section documents each key.
"""

import dataclasses
import difflib
import math
from collections.abc import Callable
from typing import Any

from ml_collections import config_dict

from rotnet_jax.errors import ConfigError

MODES = ('pretext', 'supervised', 'evaluate', 'transfer')
# Modes that start from pretrained weights (config.pretrained): heads on a
# backbone, and the whole network fine-tuned on another task.
PRETRAINED_MODES = ('evaluate', 'transfer')
# mode='transfer' tasks (PASCAL VOC): multi-label classification of
# VOC2007, semantic segmentation of VOC2012 (FCN-32s), and detection on
# VOC2007 (Fast R-CNN).
TRANSFER_TASKS = ('voc_classification', 'voc_segmentation', 'voc_detection')
ROTATION_MODES = ('all', 'random')
BN_SCALE_INITS = ('uniform', 'ones')
RANDOM_BATCH_STATS = ('reestimated', 'fresh')
# Heads that need no training: scored straight from frozen features
# (rotnet_jax/training/knn.py), not modules of models.heads.HEADS.
TRAINING_FREE_HEADS = ('knn',)
PIPELINES = ('device', 'tfdata')
# 'cifar': fixed-size images, random crop of the 4-pixel zero-padded image
# and a flip. 'imagenet' and 'resize_crop': images of any size (tf.data
# only); evaluation resizes the shorter side to eval_resize_size and takes
# the central image_size square. Training: 'imagenet' (the official
# pretext task's), a random-sized crop resized to image_size and a flip;
# 'resize_crop' (the official ImageNet and Places classifiers'), the
# shorter side resized to eval_resize_size, a random image_size crop and a
# flip.
AUGMENTATIONS = ('cifar', 'imagenet', 'resize_crop')

# CIFAR-10 per-channel statistics on the 0..255 scale (official code).
CIFAR_MEAN_RGB = (125.3, 123.0, 113.9)
CIFAR_STD_RGB = (63.0, 62.1, 66.7)
# ImageNet's per-channel statistics (the official code's, 0..1 scale) on
# the 0..255 scale; the ImageNet and Places configs use them too.
IMAGENET_MEAN_RGB = tuple(255 * m for m in (0.485, 0.456, 0.406))
IMAGENET_STD_RGB = tuple(255 * s for s in (0.229, 0.224, 0.225))

# Config keys that change what a resumed run computes. Changing one of them
# between runs in the same workdir is allowed (e.g. a longer schedule) but
# logged as a warning, since the result is no longer one consistent run.
TRAJECTORY_KEYS = (
    'dataset', 'batch_size', 'seed', 'learning_rate_table', 'momentum',
    'nesterov', 'weight_decay', 'num_train_examples', 'examples_per_class',
    'epoch_examples', 'half_precision', 'rotations', 'rotation_mode',
    'pipeline', 'augmentation', 'eval_resize_size', 'float64',
    'transfer_task', 'frozen_up_to', 'transfer_image_size', 'scale_range',
    'grad_clip_norm', 'learning_rate_steps_table', 'proposals',
    'max_proposals', 'rois_per_image', 'foreground_fraction', 'train_scales',
    'test_scale', 'max_size')


def defaults() -> config_dict.ConfigDict:
  """The RotNet CIFAR-10 pretext recipe of the official code (locked)."""
  config = config_dict.ConfigDict()
  # 'pretext' (predict rotations), 'supervised' (predict classes),
  # 'evaluate' (classifier heads on a pretrained backbone), or 'transfer'
  # (the pretrained network fine-tuned on PASCAL VOC).
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
  config.augmentation = 'cifar'  # One of AUGMENTATIONS.
  # Side the shorter image side is resized to: before the central crop of
  # augmentation='imagenet' and 'resize_crop' evaluation, and before the
  # random crop of 'resize_crop' training (0: image_size * 8 / 7, i.e. 256
  # for 224).
  config.eval_resize_size = 0
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
  # BatchNorm scales start U(0, 1), as PyTorch 0.2's BatchNorm2d did in the
  # official runs ('uniform'), or at 1 ('ones').
  config.model.bn_scale_init = 'uniform'

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
  # Side of the 'linear' head's max-pool (0: the backbone's own size for
  # each block, e.g. AlexNet's 12/7/5/6/6).
  config.linear_pool_size = 6
  # head='knn': cosine k-NN on globally pooled features, votes weighted by
  # exp(similarity / temperature).
  config.knn_k = 200
  config.knn_temperature = 0.07
  # pretrained='random': BatchNorm statistics 'reestimated' on training
  # images (weights stay random), or the 'fresh' 0/1 of a new network.
  config.random_batch_stats = 'reestimated'

  # Transfer (mode='transfer'): the pretrained network fine-tuned on a
  # TRANSFER_TASKS task of PASCAL VOC.
  config.transfer_task = 'voc_classification'
  # The blocks up to this one (included) stay frozen, in inference mode
  # ('conv5': the paper's "fc6-8" setting); '': every layer trains.
  config.frozen_up_to = ''
  # Side of the images fed to the network (0: the network's image_size):
  # the crops of classification, the canvas of segmentation.
  config.transfer_image_size = 0
  # Classification: the test scores of this many random crops are summed.
  config.test_crops = 10
  # Classification crops: the window's side is s * S (S the network's
  # input side), s uniform in this range and capped so the window fits in
  # the image, then resized to S (the image is zoomed by 1 / s).
  config.scale_range = (0.5, 2.0)
  # Gradients clipped to this global norm before the update (0: off).
  config.grad_clip_norm = 0.0
  # (end_step, lr) pairs over optimiser steps; when set, replaces
  # learning_rate_table (schedules given in iterations, as VOC's).
  config.learning_rate_steps_table = ()

  # Detection (transfer_task='voc_detection', Fast R-CNN). The proposals
  # of each split: a file (.npz of rotnet-proposals, or Fast R-CNN's
  # selective_search_data .mat) whose name may hold {split}; '' reads the
  # cache rotnet-proposals writes beside the data.
  config.proposals = ''
  # Proposals per test image: the first ones of the file (0: all, as Fast
  # R-CNN tests); images are padded to the split's largest count.
  config.max_proposals = 0
  # Regions per training image, and the most of them that are foreground.
  config.rois_per_image = 64
  config.foreground_fraction = 0.25
  # Shorter sides: one drawn per training step, and the test's. An image's
  # longer side is capped at max_size * scale / test_scale.
  config.train_scales = (480, 576, 688, 864, 1200)
  config.test_scale = 600
  config.max_size = 1000
  # Test time: per class and image, the best detections_per_class regions,
  # then non-maximum suppression at nms_threshold IoU.
  config.detections_per_class = 100
  config.nms_threshold = 0.3

  config.half_precision = False  # bf16 compute, float32 parameters.
  # float64 parameters and compute (needs jax_enable_x64): for tests that
  # compare runs exactly across device and process counts.
  config.float64 = False
  config.seed = 0

  # Bookkeeping.
  config.wandb_project = config_dict.placeholder(str)  # Also log to W&B.
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 10
  # Also save every this many steps, mid-epoch (0: only at epoch ends).
  config.checkpoint_every_steps = 0
  # Resume even if the config changes the model, data, optimiser or
  # schedule (TRAJECTORY_KEYS; a longer num_epochs is always allowed).
  config.allow_config_change = False
  config.keep_checkpoints = 3
  config.lock()
  return config


# Keys of the backbone's shape. Evaluation configs leave them unset (typed
# placeholders holding None): the pretrained weights say them.
SHAPE_KEYS = ('model.name', 'model.num_blocks', 'model.width', 'image_size')

# The official code's schedules for the classifiers on frozen features. The
# non-linear head's table ends at epoch 50 but its config trains 100 epochs:
# epochs 50-99 stay at the last rate, 0.0008.
HEAD_SCHEDULES = {
    'multlayer': dict(num_epochs=100, learning_rate_table=(
        (20, 0.1), (40, 0.02), (45, 0.004), (50, 0.0008))),
    'conv_block': dict(num_epochs=100, learning_rate_table=(
        (35, 0.1), (70, 0.02), (85, 0.004), (100, 0.0008))),
    # No CIFAR-10 protocol in the paper (its linear probes are ImageNet's):
    # the non-linear head's schedule.
    'linear': dict(num_epochs=50, learning_rate_table=(
        (20, 0.1), (40, 0.02), (45, 0.004), (50, 0.0008))),
    # The official ImageNet non-linear classifiers on AlexNet conv4/conv5.
    'alexnet_nonlinear': dict(num_epochs=40, learning_rate_table=(
        (10, 0.01), (20, 0.002), (30, 0.0004), (40, 0.00008))),
}


def evaluation_defaults(head: str) -> config_dict.ConfigDict:
  """``mode='evaluate'`` with `head` and its schedule (all blocks).

  The backbone's shape (:data:`SHAPE_KEYS`) is left unset: it is read from
  the pretrained weights (``validation.fill_shape_from_pretrained``). A
  value set in a config file or on the command line
  (``--config.image_size=32``) must match them; with
  ``pretrained='random'`` it shapes the random network. Heads are tested
  after every epoch, as the official code logged them.
  """
  config = defaults()
  config.mode = 'evaluate'
  config.head = head
  config.update(HEAD_SCHEDULES.get(head, {}))  # k-NN trains nothing.
  config.eval_every_epochs = 1
  for key in SHAPE_KEYS:
    unset(config, key)
  return config


# Krähenbühl et al.'s VOC2007 classification schedule (``train_cls.py``,
# the protocol the paper cites): base rate 0.001 halved every 10,000
# iterations, for 80,000 iterations of 16 images.
VOC_CLASSIFICATION_STEPS = 80_000
VOC_CLASSIFICATION_STEP_TABLE = tuple(
    (end, 0.001 * 0.5 ** i)
    for i, end in enumerate(range(10_000, VOC_CLASSIFICATION_STEPS + 1,
                                  10_000)))


def transfer_defaults(task: str) -> config_dict.ConfigDict:
  """``mode='transfer'`` on `task` (one of :data:`TRANSFER_TASKS`).

  The backbone's shape is read from the pretrained weights, as an
  evaluation's is. Classification follows Krähenbühl et al.'s
  ``voc-classification`` code: SGD with momentum 0.9 (no Nesterov),
  weight decay 1e-6, gradients clipped at norm 10, batches of 16,
  :data:`VOC_CLASSIFICATION_STEP_TABLE`, on TFDS ``voc/2007`` trainval,
  tested on test with 10 random crops per image. 5,011 trainval images
  give 313 full batches per epoch: 256 epochs are 80,128 iterations, the
  nearest whole number of epochs above 80,000. Segmentation (FCN-32s) is
  in ``configs/voc12_segmentation.py``.
  """
  config = defaults()
  config.mode = 'transfer'
  config.transfer_task = task
  config.dataset = 'voc/2007'
  config.train_split = 'trainval'
  config.test_split = 'test'
  config.mean_rgb = IMAGENET_MEAN_RGB
  config.std_rgb = IMAGENET_STD_RGB
  config.batch_size = 16
  config.num_epochs = 256
  config.learning_rate_steps_table = VOC_CLASSIFICATION_STEP_TABLE
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-6
  config.grad_clip_norm = 10.0
  config.eval_every_epochs = 32
  config.checkpoint_every_epochs = 4
  for key in SHAPE_KEYS:
    unset(config, key)
  return config


def unset(config, key: str) -> None:
  """Leaves the key `key` (dotted) of `config` unset, keeping its type.

  The value becomes a typed placeholder (``config_dict.placeholder``)
  holding None, not a bare None: ml_collections refuses to override a
  bare None from the command line ("Type NoneType ... not supported for
  overriding"), and would take a value of any type for it.
  """
  *parents, leaf = key.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  field_type = node.get_type(leaf)
  if field_type is type(None):
    raise ValueError(f'config.{key} is a bare None: it has no type to keep')
  node[leaf] = config_dict.placeholder(field_type)


def use_imagenet_input(config, dataset: str = 'imagenet2012') -> None:
  """Sets `config` to the official ImageNet-style recipe's input: `dataset`
  through tf.data with the ImageNet augmentation and statistics, batches of
  192 images, a checkpoint every (long) epoch."""
  config.dataset = dataset
  config.pipeline = 'tfdata'
  # Encoded JPEGs of ~110 KB: 10,000 of them hold about 1.1 GB per process
  # (the 50,000 default would hold 5.5 GB).
  config.shuffle_buffer_size = 10_000
  config.augmentation = 'imagenet'
  config.train_split = 'train'
  config.test_split = 'validation'
  config.mean_rgb = IMAGENET_MEAN_RGB
  config.std_rgb = IMAGENET_STD_RGB
  config.batch_size = 192
  config.checkpoint_every_epochs = 1


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
      if value is None:
        unset(result, name)  # Still typed, for the command line and checks.
      else:
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


@dataclasses.dataclass(frozen=True)
class Rule:
  """The values one config key accepts, beyond its type.

  Attributes:
    accepts: ``value -> bool`` (or a ConfigError of its own that says
      more precisely what is wrong); None when a registry checks the value
      (``models.check_config``: backbone names, heads, blocks).
    what: what a valid value is, for the error message.
    invalid: values of the right type that are refused (the tests feed
      each one through the command line).
  """
  accepts: Callable[[Any], bool] | None
  what: str
  invalid: tuple[Any, ...] = ()


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return ((_is_int(value) or isinstance(value, float)) and
          math.isfinite(value))


def _count(minimum: int, maximum: int | None = None) -> Rule:
  if maximum is None:
    return Rule(lambda v: _is_int(v) and v >= minimum,
                f'must be an integer >= {minimum}', (minimum - 1,))
  return Rule(lambda v: _is_int(v) and minimum <= v <= maximum,
              f'must be an integer in [{minimum}, {maximum}]',
              (minimum - 1, maximum + 1))


def _number(low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> Rule:
  def accepts(v):
    return (_is_number(v) and (v > low if low_open else v >= low) and
            (v < high if high_open else v <= high))
  interval = (f"{'(' if low_open else '['}{low:g}, {high:g}"
              f"{')' if high_open else ']'}")
  return Rule(accepts, f'must be a finite number in {interval}',
              (low - 1, high + 1, float('inf')))


def _choice(options: tuple[str, ...]) -> Rule:
  return Rule(lambda v: v in options, f'must be one of {options}',
              ('no-such-' + options[0],))


def _text(what: str, *, optional: bool = False) -> Rule:
  return Rule(lambda v: (optional and v is None) or (
      isinstance(v, str) and v.strip() != ''), f'must be {what}', ('',))


def _registry(what: str, *invalid) -> Rule:
  return Rule(None, f'must be {what}', invalid)


def _numbers(count: int, *, positive: bool) -> Callable[[Any], bool]:
  return lambda v: (isinstance(v, (tuple, list)) and len(v) == count and
                    all(_is_number(x) and (x > 0 or not positive)
                        for x in v))


def _angles(v) -> bool:
  return (isinstance(v, (tuple, list)) and 2 <= len(v) <= 360 and
          all(_is_number(x) for x in v) and
          len({x % 360 for x in v}) == len(v))


def _learning_rate_table(table) -> bool:
  # Its own checks say precisely what is wrong with a table.
  check_learning_rate_table(table)
  return True


def _learning_rate_steps_table(table) -> bool:
  if table:
    check_learning_rate_table(table, 'learning_rate_steps_table', 'step')
  return True


def _scales(v) -> bool:
  return (isinstance(v, (tuple, list)) and len(v) > 0 and
          all(isinstance(x, int) and not isinstance(x, bool) and x > 0
              for x in v))


def _scale_range(v) -> bool:
  return (_numbers(2, positive=True)(v) and v[0] <= v[1])


# Anything of the key's type is valid.
_FREE = Rule(lambda v: True, 'anything')

# Every key of defaults() has a rule (a test checks it).
RULES: dict[str, Rule] = {
    'mode': _choice(MODES),
    'experiment': _FREE,
    'dataset': _text('a TFDS name, an image-folder path or "digits"'),
    'data_dir': _text('a folder (or unset)', optional=True),
    'cache_dir': _text('a writable folder (or unset)', optional=True),
    'pipeline': _choice(PIPELINES),
    'train_split': _text('a split name'),
    'test_split': _text('a split name'),
    'image_size': _count(8, 4096),
    'shuffle_buffer_size': _count(1),
    'num_train_examples': _count(0),
    'examples_per_class': _count(0),
    'epoch_examples': _count(0),
    'augmentation': _choice(AUGMENTATIONS),
    'eval_resize_size': _count(0),
    'mean_rgb': Rule(_numbers(3, positive=False),
                     'must be 3 finite numbers (R, G, B; 0..255 scale)',
                     ((1.0, 2.0),)),
    'std_rgb': Rule(_numbers(3, positive=True),
                    'must be 3 finite positive numbers (R, G, B)',
                    ((60.0, 0.0, 60.0),)),
    'batch_size': _count(1),
    'num_epochs': _count(1),
    'learning_rate_table': Rule(
        _learning_rate_table, 'must be ((end_epoch, lr), ...) with positive, '
        'increasing end epochs and finite rates >= 0',
        (((60, 0.1), (30, 0.01)), ((10, -0.1),), ((10,),))),
    'momentum': _number(0, 1, high_open=True),
    'nesterov': _FREE,
    'weight_decay': _number(0, 1),
    'model.name': _registry('a registered backbone', 'resnet'),
    'model.num_blocks': _count(1, 64),
    'model.width': _number(0, 16, low_open=True),
    'model.bn_scale_init': _choice(BN_SCALE_INITS),
    'rotations': Rule(_angles, 'must be 2 to 360 finite angles in degrees, '
                      'distinct modulo 360', ((0, 360), (0,))),
    'rotation_mode': _choice(ROTATION_MODES),
    'pretrained': _text("a run's workdir or 'random' (or unset)",
                        optional=True),
    'pretrained_step': _count(0),
    'head': _registry('a registered head', 'mlp'),
    'blocks': _registry('block names of the backbone', ('conv9',)),
    'finetune': _FREE,
    'linear_pool_size': _count(0),
    'knn_k': _count(1),
    'knn_temperature': _number(0, 100, low_open=True),
    'random_batch_stats': _choice(RANDOM_BATCH_STATS),
    'transfer_task': _choice(TRANSFER_TASKS),
    'frozen_up_to': Rule(None, "must be a block name of the backbone, or '' "
                         '(nothing frozen)', ('conv9',)),
    'transfer_image_size': _count(0, 4096),
    'test_crops': _count(1, 100),
    'scale_range': Rule(_scale_range, 'must be (low, high) with 0 < low <= '
                        'high, finite', ((2.0, 0.5), (0.0, 1.0))),
    'grad_clip_norm': _number(0, 1e9),
    'learning_rate_steps_table': Rule(
        _learning_rate_steps_table, 'must be () or ((end_step, lr), ...) '
        'with positive, increasing end steps and finite rates >= 0',
        (((100, 0.1), (50, 0.01)),)),
    'proposals': Rule(
        lambda v: isinstance(v, str) and (v == '' or v.endswith(
            ('.npz', '.mat'))),
        "must be '' (the cache beside the data) or a .npz or .mat file, "
        '{split} standing for the split', ('proposals.txt',)),
    'max_proposals': _count(0, 100_000),
    'rois_per_image': _count(1, 10_000),
    'foreground_fraction': _number(0, 1),
    'train_scales': Rule(_scales, 'must be a non-empty tuple of positive '
                         'integers (shorter sides in pixels)', ((), (0,))),
    'test_scale': _count(1, 10_000),
    'max_size': _count(1, 20_000),
    'detections_per_class': _count(1, 10_000),
    'nms_threshold': _number(0, 1),
    'half_precision': _FREE,
    'float64': _FREE,
    'seed': _count(0, 2**31 - 1),
    'wandb_project': _text('a Weights & Biases project name (or unset)',
                           optional=True),
    'log_every_steps': _count(1),
    'eval_every_epochs': _count(1),
    'checkpoint_every_epochs': _count(1),
    'checkpoint_every_steps': _count(0),
    'allow_config_change': _FREE,
    'keep_checkpoints': _count(1),
}


def validate(config) -> config_dict.ConfigDict:
  """Checks every key's value against :data:`RULES` and the cross-key rules.

  Returns:
    `config` as a typed config of this schema (see :func:`conform`).

  Raises:
    ConfigError: naming the offending key and what would be valid.
  """
  config = conform(config)
  flat = flatten(config)
  evaluate = flat['mode'] in PRETRAINED_MODES
  for name, rule in RULES.items():
    if evaluate and name in SHAPE_KEYS and flat[name] is None:
      continue  # Taken from the pretrained weights.
    if rule.accepts is not None and not rule.accepts(flat[name]):
      raise ConfigError(f'config.{name}={flat[name]!r}: {rule.what}')

  def require(ok, name, what):
    if not ok:
      raise ConfigError(f'config.{name}={flat[name]!r}: {what}')

  require(not evaluate or flat['pretrained'], 'pretrained',
          f"mode={flat['mode']!r} needs the pretext run's workdir (or "
          "'random' for a randomly initialised backbone)")
  require(evaluate or flat['pretrained'] is None, 'pretrained',
          f"is only used by mode='evaluate' and 'transfer' (mode is "
          f"{flat['mode']!r}): leave it unset")
  require(not (flat['head'] in TRAINING_FREE_HEADS and flat['finetune'] and
               evaluate), 'finetune',
          f"head={flat['head']!r} trains nothing, so there is no backbone "
          'to fine-tune: leave finetune at False')
  require(not (flat['num_train_examples'] and flat['examples_per_class']),
          'examples_per_class', 'cannot be combined with num_train_examples')
  return config


def check_learning_rate_table(table, key: str = 'learning_rate_table',
                              unit: str = 'epoch') -> None:
  """Raises ConfigError unless `table` is a valid learning-rate table.

  Valid: ``((end, lr), ...)``, non-empty, with positive, increasing ends
  (epochs, or steps for ``learning_rate_steps_table``) and finite rates
  >= 0. The error names ``config.<key>``.
  """
  if (not isinstance(table, (tuple, list)) or not table or
      any(not isinstance(row, (tuple, list)) or len(row) != 2
          for row in table)):
    raise ConfigError(f'config.{key} must be a non-empty sequence of '
                      f'(end_{unit}, lr) pairs, got {table!r}')
  if not all(_is_number(x) for row in table for x in row):
    raise ConfigError(f'config.{key}: end {unit}s and rates must be finite '
                      f'numbers, got {table!r}')
  ends = [row[0] for row in table]
  if any(e <= 0 for e in ends) or any(b <= a for a, b in zip(ends, ends[1:])):
    raise ConfigError(f'config.{key}: end {unit}s must be positive and '
                      f'increasing, got {ends}')
  if any(row[1] < 0 for row in table):
    raise ConfigError(f'config.{key}: learning rates must be >= 0, got '
                      f'{table!r}')


def trajectory_changes(saved: dict[str, Any], current: dict[str, Any]
                       ) -> list[str]:
  """The :data:`TRAJECTORY_KEYS` whose values differ between two configs.

  Args:
    saved: the resolved config saved with a checkpoint.
    current: the resolved config of this run.
  """
  return [k for k in TRAJECTORY_KEYS
          if k in saved and saved[k] != current.get(k)]
