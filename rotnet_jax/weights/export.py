"""Any weights ``weights.read`` accepts, exported as one file.

    python -m rotnet_jax.export WORKDIR OUT.safetensors [--step=0] [--overwrite]
    python -m rotnet_jax.export WORKDIR OUT.pth [--step=0] [--overwrite]

WORKDIR may be a run's workdir (its latest checkpoint, or ``--step``), an
exported file, or an official PyTorch file. Two formats
(:func:`output_format`):

* ``safetensors`` (``*.safetensors``): everything, heads included, with
  what the source says about the arrays: the run's config and the angles
  the backbone's classifier predicts (:func:`rotations_at`); layout and
  metadata: ``safetensors_format``;
* ``torch`` (``*.pth``, ``*.pt``, or any other name but ``*.safetensors``
  with ``--format=torch``): a NIN or AlexNet backbone in the layout of the
  official FeatureLearningRotNet files, ``{'epoch': N, 'network':
  state_dict}`` (``torch_format.write``), for PyTorch code; N is the
  epoch the source says (a workdir checkpoint's, an official file's; 0
  for an exported file).

The file is not written inside a workdir a run is training in: a
workdir's lock keeps out every writer but its run.
"""

from typing import Any

from absl import logging

from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.weights import safetensors_format
from rotnet_jax.weights import torch_format
from rotnet_jax.weights import workdir_format
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files

# The angles of an official FeatureLearningRotNet classifier.
OFFICIAL_ROTATIONS = (0, 90, 180, 270)
# The formats `export` writes (``--format``).
FORMATS = (weights_lib.SAFETENSORS, weights_lib.TORCH)


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


def output_format(out: str, file_format: str | None = None) -> str:
  """The format to write `out` in: `file_format`, or told by its ending.

  Without `file_format`, ``*.safetensors`` is :data:`weights.SAFETENSORS`
  and ``*.pth`` / ``*.pt`` :data:`weights.TORCH`. A `file_format` whose
  ending says the other format is refused (every reader tells the formats
  apart by the ending ``.safetensors``); ``torch`` takes any other name
  too, as the official files have none (``model_net_epoch200``).

  Raises:
    InputError: an unknown `file_format`, a name of the other format, or
      (without `file_format`) a name of neither.
  """
  if file_format is not None and file_format not in FORMATS:
    raise InputError(f'--format={file_format!r}: valid formats are '
                     f'{", ".join(FORMATS)}')
  safetensors_named = out.endswith(weights_lib.SAFETENSORS_SUFFIX)
  torch_named = out.endswith(torch_format.SUFFIXES)
  torch_endings = '/'.join(torch_format.SUFFIXES)
  if file_format == weights_lib.TORCH and safetensors_named:
    raise InputError(
        f'--format=torch, but output={out!r} ends in '
        f'{weights_lib.SAFETENSORS_SUFFIX}, which the readers take for a '
        f'safetensors file: name the PyTorch file {torch_endings}')
  if file_format == weights_lib.SAFETENSORS and torch_named:
    raise InputError(
        f'--format=safetensors, but output={out!r} ends in {torch_endings}, '
        f'a PyTorch name: name it {weights_lib.SAFETENSORS_SUFFIX}, or pass '
        '--format=torch')
  if file_format is not None:
    return file_format
  if torch_named:
    return weights_lib.TORCH
  if safetensors_named or not out.strip():
    # Empty: safetensors_format.check_output names what is wrong.
    return weights_lib.SAFETENSORS
  raise InputError(
      f'output={out!r} must end in {weights_lib.SAFETENSORS_SUFFIX} (our '
      f'format, heads and metadata included) or {torch_endings} (a '
      'backbone in the official PyTorch layout); or pass --format=torch to '
      'write a PyTorch file of another name')


def source_epoch(path: str, weights: weights_lib.Weights) -> int:
  """The epoch the weights at `path` were saved at, as far as it is known.

  A workdir's checkpoint says how many epochs it had done, an official
  file its ``epoch``; an exported file does not say (0).
  """
  path_kind = weights_lib.kind(path)
  if path_kind == weights_lib.TORCH:
    return torch_format.read_kind(path)[1] or 0
  if path_kind != weights_lib.WORKDIR:
    return 0
  checkpoints, step = workdir_format.pretrained_checkpoint(
      path, weights.origin.get('pretrained_step') or 0)
  try:
    meta = workdir_format.read_checkpoint_part(
        checkpoints, step, 'its metadata',
        lambda: checkpoints.read_meta(step))
  finally:
    checkpoints.close()
  epoch = meta.get('epoch')
  return epoch if isinstance(epoch, int) and epoch >= 0 else 0


def export(path: str, out: str, *, step: int = 0, overwrite: bool = False,
           file_format: str | None = None) -> str:
  """Reads the weights at `path` (see ``weights.read``) and writes `out`.

  Args:
    path: a run's workdir, an exported file or an official PyTorch file.
    out: the file to write (see :func:`output_format`).
    step: a workdir's checkpoint step (0: the latest).
    overwrite: replace an existing `out`.
    file_format: one of :data:`FORMATS`, or None to tell it by the name
      of `out`.

  Returns:
    The absolute path of `out`.

  Raises:
    MissingInputError, InputError: see ``weights.read``,
      :func:`output_format`, ``safetensors_format.write`` and
      ``torch_format.write``; or `out` is inside a workdir a run is
      training in (``lock.check_not_inside_locked``).
  """
  chosen = output_format(out, file_format)
  formats = {weights_lib.SAFETENSORS: safetensors_format,
             weights_lib.TORCH: torch_format}
  # Checked before the (slow) read too: a bad `out` fails at once.
  full = formats[chosen].check_output(out, overwrite=overwrite)
  workdir_lock.check_not_inside_locked(full, 'the output')
  weights = weights_lib.read(path, step)
  if chosen == weights_lib.TORCH:
    # Refused (heads, another backbone) before anything else is read.
    torch_format.check_writable(weights)
    epoch = source_epoch(path, weights)
  # Again: a run may have started in that workdir during the read.
  workdir_lock.check_not_inside_locked(full, 'the output')
  if chosen == weights_lib.SAFETENSORS:
    return safetensors_format.write(
        weights, out, overwrite=overwrite, config=source_config(path),
        rotations=rotations_at(path, weights))
  for note in torch_format.unrecorded(weights):
    logging.warning('%s: %s', full, note)
  return torch_format.write(weights, out, epoch=epoch, overwrite=overwrite)
