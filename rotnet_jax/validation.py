"""The checks every command runs before it creates or writes anything.

``config_schema.validate`` knows the keys' values and the rules between
them; the model registries know their own names and shapes
(``models.check_config``); ``run_files`` knows what a workdir may hold.
:func:`check_config` and :func:`check_run` run them, so a command needs
one call.
"""

from ml_collections import config_dict

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import run_files
from rotnet_jax.data import arrays
from rotnet_jax.data import datasets


def check_config(config) -> config_dict.ConfigDict:
  """Checks `config` and returns it as a typed config of the schema.

  Raises:
    ConfigError: naming the offending key and what would be valid.
  """
  config = config_schema.validate(config)
  models.check_config(config)
  return config


def check_run(config, workdir: str) -> config_dict.ConfigDict:
  """:func:`check_config`, and the folders the run will write.

  Raises:
    InputError: a bad config, a workdir that cannot hold a run, or a
      ``cache_dir`` that cannot be written.
  """
  config = check_config(config)
  run_files.check_workdir(workdir)
  # The device pipeline caches decoded image folders and TFDS splits; a
  # cache_dir that is set is checked whether or not it will be used.
  if config.cache_dir is not None or (
      config.pipeline == 'device' and
      datasets.dataset_kind(config.dataset) != 'digits'):
    run_files.check_writable_folder(
        config.cache_dir or arrays.DEFAULT_CACHE_DIR, 'config.cache_dir')
  return config
