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
from rotnet_jax.errors import ConfigError
from rotnet_jax.errors import InputError
from rotnet_jax.weights import restore
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files


def check_config(config, *, pretrained_must_exist: bool = False
                 ) -> config_dict.ConfigDict:
  """Checks `config` and returns it as a typed config of the schema.

  An evaluation config's unset shape keys are filled in from the
  pretrained weights (``restore.fill_shape_from_pretrained``). Where those
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
  filled = restore.fill_shape_from_pretrained(
      config, must_exist=pretrained_must_exist)
  _check_augmentation(config)
  # float64 needs jax_enable_x64 and excludes half_precision: said before
  # any data is opened.
  models.compute_dtype(config.half_precision, config.float64)
  if filled:
    models.check_config(config)
  return config


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
