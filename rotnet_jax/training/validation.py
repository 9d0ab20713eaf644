"""The checks every command runs before it creates or writes anything.

``config_schema.validate`` knows the keys' values and the rules between
them; the model registries know their own names and shapes
(``models.check_config``); ``run_files`` knows what a workdir may hold.
:func:`check_config` and :func:`check_run` run them, so a command needs
one call.
"""

import importlib.util

from ml_collections import config_dict

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax.data import arrays
from rotnet_jax.data import datasets
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
  pretrained weights (:func:`fill_shape_from_pretrained`). Where those
  do not exist yet (a table whose pretext runs are still to come), the
  checks that need the shape wait for the run's own :func:`check_run`.

  Args:
    config: the config.
    pretrained_must_exist: fail if the pretrained weights do not exist.

  Raises:
    ConfigError: naming the offending key and what would be valid.
    MissingInputError: the pretrained weights do not exist (only with
      `pretrained_must_exist`).
  """
  config = config_schema.validate(config)
  filled = fill_shape_from_pretrained(
      config, must_exist=pretrained_must_exist)
  _check_augmentation(config)
  # float64 needs jax_enable_x64 and excludes half_precision: said before
  # any data is opened.
  models.compute_dtype(config.half_precision, config.float64)
  if filled:
    models.check_config(config)
  return config


def fill_shape_from_pretrained(config, *, must_exist: bool) -> bool:
  """Sets the unset (None) shape keys of an evaluation config.

  ``config.model.name``, ``model.num_blocks``, ``model.width`` (and any
  other key of the backbone's spec under ``config.model``) and
  ``image_size`` are taken from the spec of the weights
  ``config.pretrained`` names (``weights.read_spec``: no arrays read);
  for ``pretrained='random'`` from the pretext defaults. Keys that are set
  stay as they are (a mismatch is reported when the weights are loaded).

  Args:
    config: a validated config; changed in place (it may be locked).
    must_exist: raise if the pretrained weights do not exist yet; else
      leave the keys unset (``rotnet_jax.reproduce`` checks a whole table
      before its pretext runs exist).

  Returns:
    Whether every shape key is now set.

  Raises:
    MissingInputError, InputError: the weights cannot be read (only with
      `must_exist`, for a missing path).
  """
  unset = shape_keys_unset(config)
  if not unset:
    return True
  if config.mode != 'evaluate' or config.pretrained is None:
    return False  # config_schema.validate reports it.
  if config.pretrained == weights_lib.RANDOM:
    defaults = config_schema.defaults()
    saved = dict(models.backbone_spec(defaults.model,
                                      image_size=defaults.image_size,
                                      num_classes=0))
  else:
    try:
      weights_lib.pretrained_kind(config.pretrained)
      saved = weights_lib.read_spec(config.pretrained,
                                    config.pretrained_step)
    except MissingInputError:
      # No weights, or no checkpoint yet (a pretext run still to come).
      if must_exist:
        raise
      return False
  for key in unset:
    name = key.split('.')[-1]
    if name not in saved:
      raise InputError(
          f'config.{key} is unset, and the weights at '
          f'config.pretrained={config.pretrained!r} do not say it: set it')
    # A locked config takes new values for its existing keys.
    target = config.model if key.startswith('model.') else config
    setattr(target, name, saved[name])
  return True


def shape_keys_unset(config) -> list[str]:
  """The shape keys of `config` left unset (``None``), by dotted name."""
  unset = [f'model.{k}' for k, v in config.model.items() if v is None]
  if config.image_size is None:
    unset.append('image_size')
  return unset


def _check_augmentation(config) -> None:
  """Raises ConfigError unless the pipeline can give the augmentation.

  ``augmentation='imagenet'`` reads images of any size, which the device
  pipeline (one resident array of same-size images) cannot hold; and its
  evaluation crop must fit in the resized image.
  """
  if config.augmentation != 'imagenet':
    return
  if config.pipeline == 'device':
    raise ConfigError(
        "config.augmentation='imagenet' needs config.pipeline='tfdata' (it "
        'decodes images of any size and crops them on the host); the '
        "device pipeline keeps same-size images on the devices: use "
        "augmentation='cifar' with it")
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
