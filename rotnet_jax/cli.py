"""What the command-line entry points share: quiet logs, clean failures."""

import logging as python_logging
import sys

from absl import logging


def _hide_library_info_logs(record) -> bool:
  return (record.levelno >= python_logging.WARNING or
          '/orbax/' not in record.pathname)


def quiet_library_logs() -> None:
  """Keeps Orbax's many INFO lines per checkpoint out of the console."""
  logging.get_absl_logger().addFilter(_hide_library_info_logs)


def fail(error: Exception) -> None:
  """Exits with status 2 and a one-line message (bad input, no traceback)."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)
