"""The checks every command runs on a config before it creates anything.

``config_schema.validate`` knows the keys' values and the rules between
them; the model registries know their own names and shapes
(``models.check_config``). :func:`check_config` runs both, so a command
needs one call.
"""

from ml_collections import config_dict

from rotnet_jax import config_schema
from rotnet_jax import models


def check_config(config) -> config_dict.ConfigDict:
  """Checks `config` and returns it as a typed config of the schema.

  Raises:
    ConfigError: naming the offending key and what would be valid.
  """
  config = config_schema.conform(config)
  config_schema.validate(config)
  models.check_config(config)
  return config
