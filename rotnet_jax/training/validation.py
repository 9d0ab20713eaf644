"""The checks every command runs before it creates or writes anything.

``config_schema.validate`` knows the keys' values and the rules between
them; the model registries know their own names and shapes
(``models.check_config``); ``run_files`` knows what a workdir may hold.
:func:`check_config` and :func:`check_run` run them, so a command needs
one call.
"""

import importlib.util
from typing import Any

from ml_collections import config_dict

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax.data import arrays
from rotnet_jax.data import datasets
from rotnet_jax.data import voc
from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import ConfigError
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files


def check_config(config, *, pretrained_must_exist: bool = False
                 ) -> config_dict.ConfigDict:
  """Checks `config` and returns it as a typed config of the schema.

  An evaluation config's unset shape keys are filled in from the
  pretrained weights, and its set ones checked against them
  (:func:`fill_shape_from_pretrained`). Where those do not exist yet (a
  table whose pretext runs are still to come), the checks that need the
  shape wait for the run's own :func:`check_run`.

  Args:
    config: the config.
    pretrained_must_exist: fail if the pretrained weights do not exist.

  Raises:
    ConfigError: naming the offending key and what would be valid.
    MissingInputError: the pretrained weights do not exist (only with
      `pretrained_must_exist`).
  """
  config = config_schema.validate(config)
  _check_transfer_dataset(config)
  filled = fill_shape_from_pretrained(
      config, must_exist=pretrained_must_exist)
  _check_augmentation(config)
  # float64 needs jax_enable_x64 and excludes half_precision: said before
  # any data is opened.
  models.compute_dtype(config.half_precision, config.float64)
  if filled:
    models.check_config(config)
  return config


def _check_transfer_dataset(config) -> None:
  """Raises ConfigError unless a transfer run reads PASCAL VOC."""
  # A path is checked when it is opened (a missing folder, or one without
  # the devkit's layout, is named there).
  if (config.mode == 'transfer' and not voc.is_voc(config.dataset) and
      datasets.dataset_kind(config.dataset) != 'folder'):
    raise ConfigError(
        f"config.dataset={config.dataset!r}: mode='transfer' fine-tunes on "
        "PASCAL VOC: give the TFDS name 'voc/2007' (classification) or a "
        'VOCdevkit folder (holding VOC2007/ and, for segmentation, '
        'VOC2012/)')


def fill_shape_from_pretrained(config, *, must_exist: bool) -> bool:
  """Sets the unset shape keys of an evaluation config; checks the set ones.

  ``config.model.name``, ``model.num_blocks``, ``model.width`` (and any
  other key of the backbone's spec under ``config.model``) and
  ``image_size`` are taken from the spec of the weights
  ``config.pretrained`` names (``weights.read_spec``: no arrays read).
  Keys that are set (in the config file or on the command line) must
  equal the weights' values: a difference is refused here, before
  anything is opened or written, naming the key and both values.

  For ``pretrained='random'`` there are no weights: the keys that are set
  shape the network, and the unset ones come from the backbone that
  ``config.model.name`` names (unset: the pretext defaults' NIN): its
  spec of the pretext defaults' other keys (so an AlexNet has its own 5
  blocks, not the NIN's 4), and its ``default_image_size`` where it
  declares one (else the pretext defaults' 32).

  Args:
    config: a validated config; changed in place (it may be locked).
    must_exist: raise if the pretrained weights do not exist yet; else
      leave the keys unset and unchecked (``rotnet_jax.reproduce`` checks
      a whole table before its pretext runs exist).

  Returns:
    Whether every shape key is now set.

  Raises:
    ConfigError: a set shape key differs from the weights' value, or a
      random backbone cannot take the default image size.
    MissingInputError, InputError: the weights cannot be read (only with
      `must_exist`, for a missing path).
  """
  unset = shape_keys_unset(config)
  if (config.mode not in config_schema.PRETRAINED_MODES or
      config.pretrained is None):
    return not unset  # config_schema.validate reports unset keys.
  if config.pretrained == weights_lib.RANDOM:
    if not unset:
      return True  # The config alone describes the network.
    saved = _random_spec(config, unset)
  else:
    try:
      weights_lib.pretrained_kind(config.pretrained)
      saved = weights_lib.read_spec(config.pretrained,
                                    config.pretrained_step)
    except MissingInputError:
      # No weights, or no checkpoint yet (a pretext run still to come).
      if must_exist:
        raise
      return not unset
    _check_set_keys_match(config, saved, unset)
  for key in unset:
    name = key.split('.')[-1]
    if name not in saved:
      raise InputError(
          f'config.{key} is unset, and the weights at '
          f'config.pretrained={config.pretrained!r} do not say it: set it')
    # A locked config takes new values for its existing keys.
    target = config.model if key.startswith('model.') else config
    try:
      setattr(target, name, saved[name])
    except TypeError as e:
      raise InputError(
          f'config.pretrained={config.pretrained!r} says {name}='
          f'{saved[name]!r}, which is not a value config.{key} can take '
          f'({e}): set config.{key}') from e
  return True


def _check_set_keys_match(config, saved: dict[str, Any],
                          unset: list[str]) -> None:
  """Raises ConfigError unless every set shape key equals the weights'.

  Exact equality, as the restore's own comparison of the whole spec
  (``weights.restore``) uses; ``1 == 1.0`` for a width.
  """
  differ = []
  for key in _shape_keys(config):
    name = key.split('.')[-1]
    if key in unset or name not in saved:
      continue
    value = config.model[name] if key.startswith('model.') else config[name]
    if value != saved[name]:
      differ.append((key, value, saved[name]))
  if differ:
    given = ', '.join(f'config.{k}={v!r}' for k, v, _ in differ)
    theirs = ', '.join(f'{k.split(".")[-1]}={w!r}' for k, _, w in differ)
    flags = ' '.join(f'--config.{k}={w}' for k, _, w in differ)
    raise ConfigError(
        f'{given}: the weights at config.pretrained={config.pretrained!r} '
        f'hold a network with {theirs}. Leave the shape keys unset to take '
        f"the weights' values, or pass {flags}")


def _random_spec(config, unset: list[str]) -> dict[str, Any]:
  """The spec a random backbone takes its unset shape keys from.

  The backbone named by ``config.model.name`` (the pretext defaults' if
  unset) makes it from the keys that are set and the pretext defaults
  for the others, so a key the backbone fixes (AlexNet's 5 blocks) is
  its own, not the NIN's.
  """
  defaults = config_schema.defaults()
  model = defaults.model
  for name, value in config.model.items():
    if value is not None:
      setattr(model, name, value)
  backbone = models.get_backbone(model.name)
  if config.image_size is not None:
    image_size = config.image_size
  else:
    image_size = backbone.default_image_size
  try:
    return dict(models.backbone_spec(model, image_size=image_size,
                                     num_classes=0))
  except ConfigError as e:
    if 'image_size' not in unset:
      raise
    raise ConfigError(
        f"config.image_size is unset, and pretrained='random' has no "
        f'weights to take it from; the default {image_size} does not fit '
        f'the {model.name} backbone ({e}): set --config.image_size') from e


def _shape_keys(config) -> list[str]:
  """Every shape key of `config` by dotted name: ``model.*`` and
  ``image_size``."""
  return [f'model.{k}' for k in config.model] + ['image_size']


def shape_keys_unset(config) -> list[str]:
  """The shape keys of `config` left unset (``None``), by dotted name."""
  unset = [f'model.{k}' for k, v in config.model.items() if v is None]
  if config.image_size is None:
    unset.append('image_size')
  return unset


def _check_augmentation(config) -> None:
  """Raises ConfigError unless the pipeline can give the augmentation.

  ``augmentation='imagenet'`` and ``'resize_crop'`` read images of any
  size, which the device pipeline (one resident array of same-size
  images) cannot hold; and their crops must fit in the resized image
  (``resize_crop`` crops its training images from the same resize).
  """
  if not datasets.any_size(config):
    return
  if config.pipeline == 'device':
    raise ConfigError(
        f'config.augmentation={config.augmentation!r} needs '
        "config.pipeline='tfdata' (it decodes images of any size and crops "
        'them on the host); the device pipeline keeps same-size images on '
        "the devices: use augmentation='cifar' with it")
  if config.image_size is None:
    return  # An evaluation's, from pretrained weights not yet written.
  resize = datasets.eval_resize_size(config)
  if resize < config.image_size:
    raise ConfigError(
        f'config.eval_resize_size={config.eval_resize_size}: the shorter '
        f'side is resized to {resize}, smaller than the central '
        f'{config.image_size}x{config.image_size} crop '
        f'(config.image_size); use 0 (image_size * 8 / 7) or at least '
        f'{config.image_size}')


def check_run(config, workdir: str) -> config_dict.ConfigDict:
  """:func:`check_config`, and the folders the run will write.

  Raises:
    InputError: a bad config, pretrained weights that cannot be read, a
      workdir that cannot hold a run or that another run is using, or a
      ``cache_dir`` that cannot be written.
  """
  config = check_config(config, pretrained_must_exist=True)
  run_files.check_workdir(workdir)
  workdir_lock.check_not_locked(workdir)  # Early; loop.fit takes the lock.
  if config.wandb_project and importlib.util.find_spec('wandb') is None:
    raise InputError(
        f'config.wandb_project={config.wandb_project!r}: Weights & Biases '
        'logging needs the wandb package (pip install wandb); leave the key '
        'unset to log to metrics.jsonl and TensorBoard only')
  # The device pipeline caches decoded image folders and TFDS splits; a
  # cache_dir that is set is checked whether or not it will be used.
  if config.cache_dir is not None or (
      config.pipeline == 'device' and
      datasets.dataset_kind(config.dataset) != 'digits'):
    if config.cache_dir is not None and filesystem.is_remote(config.cache_dir):
      # The cache holds decoded images read back with np.load on every
      # run: it must be on this machine's disk (data_dir may be remote).
      raise InputError(
          f'config.cache_dir={config.cache_dir!r} must be a local folder (the '
          'decoded-image cache is read from local disk); data_dir and '
          '--workdir may be gs:// URLs')
    filesystem.check_writable_folder(
        config.cache_dir or arrays.DEFAULT_CACHE_DIR, 'config.cache_dir')
  return config
