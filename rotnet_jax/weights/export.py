"""Any weights ``weights.read`` accepts, exported as one safetensors file.

    python -m rotnet_jax.export WORKDIR OUT.safetensors [--step=0] [--overwrite]

WORKDIR may be a run's workdir (its latest checkpoint, or ``--step``), an
exported file, or an official PyTorch file. The file's layout and metadata:
``safetensors_format``. Besides the arrays, an export keeps what the
source says about them: the run's config and the angles the backbone's
classifier predicts (:func:`rotations_at`). The file is not written inside
a workdir a run is training in: a workdir's lock keeps out every writer
but its run.
"""

from typing import Any

from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.weights import safetensors_format
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files

# The angles of an official FeatureLearningRotNet classifier.
OFFICIAL_ROTATIONS = (0, 90, 180, 270)


def rotations_of(config: dict[str, Any] | None, origin: dict[str, Any],
                 depth: int = 0) -> tuple[float, ...] | None:
  """The angles the backbone's classifier predicts, when they are known.

  A pretext run's ``config.json`` names them; an evaluation run's backbone
  is its ``pretrained`` run's; an official file predicts 0/90/180/270.

  Args:
    config: the run's config (``config.json`` content), or None.
    origin: ``Weights.origin`` (for an official file).
    depth: recursion guard for evaluation runs naming each other.

  Returns:
    The angles in label order, or None (a supervised or random backbone).
  """
  if origin.get('pretrained_format') == weights_lib.TORCH:
    return OFFICIAL_ROTATIONS
  if config is None or depth > 3:
    return None
  if config.get('mode') == 'pretext':
    return tuple(config['rotations'])
  pretrained = config.get('pretrained')
  if config.get('mode') != 'evaluate' or pretrained in (None,
                                                        weights_lib.RANDOM):
    return None
  try:
    path_kind = weights_lib.kind(pretrained)
  except InputError:
    return None  # The backbone's run moved: its angles are unknown.
  if path_kind == weights_lib.WORKDIR:
    return rotations_of(run_files.read_config(pretrained), {}, depth + 1)
  if path_kind == weights_lib.SAFETENSORS:
    rotations = safetensors_format.read_metadata(pretrained).get('rotations')
    return None if rotations is None else tuple(rotations)
  return OFFICIAL_ROTATIONS


def source_config(path: str) -> dict[str, Any] | None:
  """The run config that came with the weights at `path`, if any.

  A workdir's ``config.json``; an exported file's ``config`` metadata; None
  for an official file.
  """
  path_kind = weights_lib.kind(path)
  if path_kind == weights_lib.WORKDIR:
    return run_files.read_config(path)
  if path_kind == weights_lib.SAFETENSORS:
    return safetensors_format.read_metadata(path).get('config')
  return None


def rotations_at(path: str, weights: weights_lib.Weights
                 ) -> tuple[float, ...] | None:
  """The angles the backbone at `path` (read as `weights`) predicts.

  An exported file says them (or null); elsewhere :func:`rotations_of`
  works them out from the run's config.
  """
  if weights_lib.kind(path) == weights_lib.SAFETENSORS:
    rotations = safetensors_format.read_metadata(path).get('rotations')
    return None if rotations is None else tuple(rotations)
  return rotations_of(source_config(path), weights.origin)


def export(path: str, out: str, *, step: int = 0,
           overwrite: bool = False) -> str:
  """Reads the weights at `path` (see ``weights.read``) and writes `out`.

  Args:
    path: a run's workdir, an exported file or an official PyTorch file.
    out: the ``*.safetensors`` file to write.
    step: a workdir's checkpoint step (0: the latest).
    overwrite: replace an existing `out`.

  Returns:
    The absolute path of `out`.

  Raises:
    MissingInputError, InputError: see ``weights.read`` and
      ``safetensors_format.write``; or `out` is inside a workdir a run is
      training in (``lock.check_not_inside_locked``).
  """
  # Checked before the (slow) read too: a bad `out` fails at once.
  full = safetensors_format.check_output(out, overwrite=overwrite)
  workdir_lock.check_not_inside_locked(full, 'the output')
  weights = weights_lib.read(path, step)
  # Again: a run may have started in that workdir during the read.
  workdir_lock.check_not_inside_locked(full, 'the output')
  return safetensors_format.write(
      weights, out, overwrite=overwrite, config=source_config(path),
      rotations=rotations_at(path, weights))
