"""What the command-line entry points share: flag parsing, quiet logs,
clean failures."""

import logging as python_logging
import re
import sys

from absl import flags
from absl import logging

from rotnet_jax import config_schema

_CONFIG_OVERRIDE = re.compile(r'^--config\.([\w.]+)(=|$)')


def _hide_library_info_logs(record) -> bool:
  return (record.levelno >= python_logging.WARNING or
          '/orbax/' not in record.pathname)


def quiet_library_logs() -> None:
  """Keeps Orbax's many INFO lines per checkpoint out of the console."""
  logging.get_absl_logger().addFilter(_hide_library_info_logs)


def fail(error) -> None:
  """Exits with status 2 and a one-line message (bad input, no traceback)."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line for ``absl.app.run(..., flags_parser=...)``.

  A bad flag value, a missing required flag, or a ``--config.KEY=...``
  override that ml_collections rejects (unknown key, wrong type) ends the
  program through :func:`fail` instead of a traceback.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)
  except (AttributeError, KeyError, TypeError) as e:
    # ml_collections' own error for an override; name the key plainly.
    known = config_schema.flatten(config_schema.defaults())
    for arg in argv[1:]:
      match = _CONFIG_OVERRIDE.match(arg)
      if match and match.group(1) not in known:
        fail(config_schema.unknown_key_error(match.group(1)))
    fail(f'bad config override: {e}')
