"""Errors for bad input: the command line prints their message, no traceback.

Raised before any training step for what a user can fix (a missing folder,
an unreadable image, a batch size that does not split over the devices).
"""


def first_line(error: BaseException) -> str:
  """The first line of `error`'s message (its repr if the message is empty).

  For one-line messages that quote another library's error.
  """
  text = str(error).strip()
  return text.splitlines()[0] if text else repr(error)


class InputError(ValueError):
  """Bad input that the user can fix; the message says what and how."""


class MissingInputError(InputError, FileNotFoundError):
  """A dataset, folder or checkpoint that should exist does not."""


class ConfigError(InputError):
  """A config key is unknown, has the wrong type, or an invalid value."""


class TrainingDiverged(RuntimeError):
  """The training loss became NaN or infinite.

  Raised before anything of the diverged steps is saved: the workdir keeps
  its last good checkpoint. Not bad input (a lower learning rate or another
  seed may help), so the command line exits with its own status.
  """
