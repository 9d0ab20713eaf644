"""Imports an official PyTorch RotNet file into a workdir of this package.

    python -m rotnet_jax.import_torch model_net_epoch200 \
        --workdir=/tmp/official_nin4
    python -m rotnet_jax.import_torch classifier_net_epoch100 \
        --backbone=model_net_epoch200 --workdir=/tmp/official_conv2 \
        [--block=conv2]

A backbone file of FeatureLearningRotNet (``NetworkInNetwork``, any number
of blocks, or the ``AlexNet`` of ``ImageNet_RotNet_AlexNet``; the AlexNet's
image size is 224 unless ``--image_size`` says otherwise) becomes a workdir
like a pretext run's: an Orbax checkpoint (``model``, a fresh
``opt_state``, ``meta`` with the file's epoch) and ``config.json``, so
``--config.pretrained=OUT`` evaluates it, and ``rotnet_jax.weights.read(OUT)``
loads it. A classifier file (``MultLayer`` or ``NIN_ConvBlock3``) needs the
backbone it was trained on (an official file or a workdir, ``--backbone``)
and becomes an evaluation run's workdir: its heads, with the backbone named
in its ``network``.

The workdir is written into a temporary sibling folder and renamed at the
end: a failure leaves no partial workdir. An existing non-empty ``--workdir``
is refused unless ``--overwrite``; a workdir a run is training in is
refused even with it, and the import holds the workdir's lock while it
writes, as a run does. Bad input is one ``error:`` line and exit status 2.
"""

import contextlib
import math
import os
import shutil
import tempfile
import time

import jax

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax import weights as weights_lib
from rotnet_jax.errors import InputError
from rotnet_jax.training import optim
from rotnet_jax.weights import torch_format
from rotnet_jax.workdir import checkpoint as checkpoint_lib
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import lock as workdir_lock
from rotnet_jax.workdir import run_files


# The official optimiser state is a separate file (model_optim_epochN) and
# is not imported: the workdir gets a fresh one, its step count set to the
# file's epoch in CIFAR-10 steps (50,000 // 128 per epoch), so that a
# resumed run continues the learning-rate table where the file stopped.
CIFAR10_TRAIN_EXAMPLES = 50_000
# The AlexNet's: ImageNet's training images (ILSVRC 2012).
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def _steps_per_epoch(config) -> int:
  examples = (IMAGENET_TRAIN_EXAMPLES if config.model.name == 'alexnet'
              else CIFAR10_TRAIN_EXAMPLES)
  return max(1, examples // config.batch_size)


def _describe(spec) -> str:
  if spec['name'] == 'alexnet':
    return (f"AlexNet (width {spec['width']:g}, {spec['image_size']}-pixel "
            'images')
  return f"NIN-{spec['num_blocks']} (width {spec['width']:g}"


def _set_shape(config, spec) -> None:
  config.update_from_flattened_dict({
      'model.name': spec['name'], 'model.num_blocks': spec['num_blocks'],
      'model.width': float(spec['width']), 'image_size': spec['image_size']})


def _imagenet_recipe(config) -> None:
  """The official ImageNet_RotNet_AlexNet recipe (as
  configs/imagenet_rotnet_alexnet.py)."""
  config.update_from_flattened_dict({
      'dataset': 'imagenet2012', 'pipeline': 'tfdata',
      'augmentation': 'imagenet', 'test_split': 'validation',
      'mean_rgb': torch_format.IMAGENET_MEAN_RGB,
      'std_rgb': torch_format.IMAGENET_STD_RGB, 'batch_size': 192,
      'num_epochs': 50, 'learning_rate_table': (
          (15, 0.01), (30, 0.001), (45, 0.0001), (50, 0.00001)),
      'eval_every_epochs': 1, 'checkpoint_every_epochs': 1})


def backbone_config(spec):
  """The config of the run that would have trained `spec` (the official
  recipe, CIFAR-10's for a NIN and ImageNet's for an AlexNet, with its
  shape and task)."""
  config = config_schema.defaults()
  if spec['name'] == 'alexnet':
    _imagenet_recipe(config)
  _set_shape(config, spec)
  classes = spec['num_classes']
  if classes == 8:
    config.rotations = tuple(range(0, 360, 45))
  elif classes == 2:
    # 0/180 or 90/270: the file cannot say which.
    config.rotations = (0, 180)
  elif classes != len(config.rotations):
    config.mode = 'supervised'
  return config


# The official ImageNet classifier schedules on the AlexNet (configs/
# imagenet_linear_probes.py, imagenet_nonlinear_conv4.py).
_ALEXNET_HEAD_SCHEDULES = {
    'linear': dict(num_epochs=35, learning_rate_table=(
        (5, 0.01), (15, 0.002), (25, 0.0004), (35, 0.00008))),
    'alexnet_nonlinear': dict(num_epochs=40, learning_rate_table=(
        (10, 0.01), (20, 0.002), (30, 0.0004), (40, 0.00008))),
}


def evaluation_config(spec, head_type: str, block, pretrained: str,
                      pretrained_step, linear_pool_size: int = 6):
  """The config of an evaluation run of `head_type` on `block` of `spec`.

  Args:
    block: a block name, or several.
    linear_pool_size: the ``linear`` heads' side (0: the backbone's own).
  """
  config = config_schema.evaluation_defaults(head_type)
  if spec['name'] == 'alexnet':
    _imagenet_recipe(config)
    config.update(_ALEXNET_HEAD_SCHEDULES.get(head_type, {}))
  _set_shape(config, spec)
  config.blocks = (block,) if isinstance(block, str) else tuple(block)
  config.linear_pool_size = linear_pool_size
  config.pretrained = pretrained
  config.pretrained_step = pretrained_step or 0
  return config


def _linear_pool_size(heads, spec) -> int:
  """``config.linear_pool_size`` of imported heads (6 unless linear)."""
  if heads.head_type != 'linear':
    return 6
  shapes = models.feature_shapes(spec)
  sides = {b: math.isqrt(heads.variables['params'][b]['output']['kernel']
                         .shape[0] // shapes[b][-1]) for b in heads.blocks}
  own = models.get_backbone(spec['name']).linear_pool_sizes(spec) or {}
  if all(own.get(b) == side for b, side in sides.items()):
    return 0
  if len(set(sides.values())) == 1:
    return next(iter(sides.values()))
  raise InputError(f'the linear classifiers pool to {sides}: neither one '
                   "side nor the backbone's own sides, which a config "
                   'cannot say')


def _opt_state(config, params, step: int):
  """A fresh optimiser state of `config`'s SGD whose step count is `step`."""
  tx = optim.from_config(config, _steps_per_epoch(config))
  state = tx.init(params)

  def set_count(path, leaf):
    name = getattr(path[-1], 'name', None) if path else None
    return jax.numpy.asarray(step, leaf.dtype) if name == 'count' else leaf

  return jax.tree_util.tree_map_with_path(set_count, state)


def _check_empty(full: str, workdir: str, overwrite: bool,
                 ignored: tuple[str, ...] = ()) -> None:
  """InputError if `full` holds more than `ignored` and `overwrite` is not
  set."""
  if (not overwrite and os.path.isdir(full) and
      set(os.listdir(full)) - set(ignored)):
    raise InputError(f'--workdir={workdir} exists and is not empty: pass '
                     '--overwrite to replace it, or another --workdir')


def check_output(workdir: str, overwrite: bool) -> str:
  """The absolute `workdir`, or InputError if it cannot be written (it, or
  a workdir it is inside, is locked by a live run; it is not empty and
  `overwrite` is not set; it cannot be created or replaced)."""
  if not workdir or not workdir.strip():
    raise InputError('--workdir is empty: pass the folder to write')
  full = os.path.abspath(os.path.expanduser(workdir))
  filesystem.check_writable_folder(full, '--workdir')
  if os.path.isdir(full):
    # Even with --overwrite: a run training there would go on writing
    # into the replaced workdir, beside the imported network.
    workdir_lock.check_not_locked(full)
  workdir_lock.check_not_inside_locked(full, '--workdir')
  _check_empty(full, workdir, overwrite)
  if os.path.isdir(full) and not os.access(os.path.dirname(full),
                                           os.W_OK | os.X_OK):
    raise InputError(f'--workdir={workdir} cannot be replaced: its parent '
                     f'{os.path.dirname(full)} is not writable')
  return full


def _write(folder: str, *, model, opt_state, meta, config, network) -> None:
  checkpoints = checkpoint_lib.Checkpointer(folder, max_to_keep=1,
                                            async_save=False)
  try:
    checkpoints.save(meta['step'], model=model, opt_state=opt_state,
                     meta=meta)
  finally:
    checkpoints.close()
  run_files.write_config(folder, config, network)


def _publish(tmp: str, full: str) -> None:
  """Renames the finished `tmp` to `full`, replacing what was there."""
  old = None
  if os.path.lexists(full):
    old = tempfile.mkdtemp(dir=os.path.dirname(full),
                           prefix=f'.{os.path.basename(full)}.old-')
    os.rmdir(old)
    os.replace(full, old)
  try:
    os.replace(tmp, full)
  except BaseException:
    if old is not None:
      os.replace(old, full)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def import_file(path: str, workdir: str, *, backbone: str | None = None,
                block: str | None = None, image_size: int | None = None,
                overwrite: bool = False) -> str:
  """Writes the workdir of an official file; returns a one-line summary.

  Args:
    path: an official backbone or classifier file.
    workdir: the workdir to write.
    backbone: for a classifier file, its backbone (official file or
      workdir).
    block: for a classifier file, the block it reads (default: inferred).
    image_size: for an AlexNet backbone file, its image size (default:
      224, or the smallest its fc layer fits).
    overwrite: replace an existing non-empty `workdir`.

  Raises:
    InputError: bad input, naming it, or a run holds `workdir`'s lock
      (naming it); nothing is written then.
  """
  start = time.time()
  full = check_output(workdir, overwrite)
  kind, epoch = torch_format.read_kind(path)
  source = os.path.abspath(os.path.expanduser(path))
  # Replacing the workdir must not delete what it is made from.
  for name, used in (('FILE', path), ('--backbone', backbone)):
    used = used and os.path.abspath(os.path.expanduser(used))
    if used and (used == full or used.startswith(full + os.sep)):
      raise InputError(f'{name}={used} is inside --workdir={workdir}, which '
                       'the import replaces: write to another --workdir')
  if kind == torch_format.BACKBONE:
    if backbone or block:
      raise InputError(f'{source} is a backbone: --backbone and --block are '
                       'only for a classifier file')
    imported = torch_format.read(path, image_size=image_size)
    spec = imported.spec
    config = backbone_config(spec)
    model = imported.variables
    network = {'backbone': spec}
    what = f"official {_describe(spec)}, {spec['num_classes']} classes)"
  else:
    if image_size is not None:
      raise InputError(f'{source} is a classifier: --image_size is only for '
                       'an AlexNet backbone file')
    if not backbone:
      raise InputError(
          f'{source} is an official {kind} classifier: pass the backbone it '
          'was trained on with --backbone=FILE_OR_WORKDIR')
    base = weights_lib.read(backbone)
    if base.heads is not None:
      raise InputError(
          f'--backbone={backbone} holds an evaluation run (heads on '
          f"{base.origin.get('pretrained')!r}): pass that backbone instead")
    spec = base.spec
    heads = torch_format.read_heads(path, spec, block)
    blocks = heads.blocks
    pretrained = base.origin['pretrained']
    pretrained_step = base.origin.get('pretrained_step')
    config = evaluation_config(spec, kind, blocks, pretrained,
                               pretrained_step,
                               linear_pool_size=_linear_pool_size(heads,
                                                                  spec))
    config.mean_rgb = tuple(base.mean_rgb)
    config.std_rgb = tuple(base.std_rgb)
    model = {'params': {'heads': heads.variables['params']},
             'batch_stats': {'heads': heads.variables['batch_stats']}}
    # What objectives.HeadsOnBackbone saves for a frozen evaluation.
    network = {'backbone': spec, 'head': kind, 'blocks': list(blocks),
               'finetune': False, 'pretrained': pretrained,
               'pretrained_step': pretrained_step,
               'num_classes': heads.num_classes}
    what = (f"official {kind} classifier on {', '.join(blocks)} "
            f'({heads.num_classes} classes) of the {_describe(spec)}) '
            f'{pretrained}')
  epoch = epoch or 0
  step = epoch * _steps_per_epoch(config)
  config_dict = run_files.resolved_config(config)
  # Kept beside `network` (not in it): a pretext run resumed here compares
  # its network with this one, which must be the same dict it builds.
  meta = {'epoch': epoch, 'step': step, 'network': network,
          'config': config_dict, 'best': {},
          'imported_from': {'file': source, 'format': 'FeatureLearningRotNet',
                            'epoch': epoch}}
  _write_workdir(full, workdir, overwrite, model=model,
                 opt_state=_opt_state(config, model['params'], step),
                 meta=meta, config=config, network=network)
  return (f'imported {what}, epoch {epoch}, from {source} into {full} in '
          f'{time.time() - start:.1f} s')


def _write_workdir(full: str, workdir: str, overwrite: bool,
                   **contents) -> None:
  """Writes `contents` (see :func:`_write`) as the workdir `full`.

  Under the workdir's lock, as a run writes its workdir: a run started
  meanwhile is refused, and one that got there first refuses the import
  (InputError, nothing changed). The new workdir is written in a
  temporary sibling that carries the lock too, then renamed onto `full`.
  """
  parent = os.path.dirname(full)
  created = not os.path.lexists(full)
  published = False
  try:
    # The lock creates `full` if need be (a lock file needs a folder).
    with workdir_lock.lock(full):
      # Again under the lock: a run may have started here since the check.
      _check_empty(full, workdir, overwrite, ignored=(run_files.LOCK_FILE,))
      tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(full)}.'
                             'importing-')
      try:
        # mkdtemp makes it private (0700); a workdir gets the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _write(tmp, **contents)
        workdir_lock.copy_into(full, tmp)
        _publish(tmp, full)
        published = True
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
  except OSError as e:
    raise InputError(f'--workdir={workdir} cannot be written: {e}') from e
  finally:
    if created and not published:
      # A failed import leaves nothing behind, not even the folder the
      # lock needed (empty once the lock is released).
      with contextlib.suppress(OSError):
        os.rmdir(full)
