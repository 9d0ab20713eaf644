"""Errors for bad input: the command line prints their message, no traceback.

Raised before any training step for what a user can fix (a missing folder,
an unreadable image, a batch size that does not split over the devices).
"""


class InputError(ValueError):
  """Bad input that the user can fix; the message says what and how."""


class MissingInputError(InputError, FileNotFoundError):
  """A dataset, folder or checkpoint that should exist does not."""


class ConfigError(InputError):
  """A config key is unknown, has the wrong type, or an invalid value."""
