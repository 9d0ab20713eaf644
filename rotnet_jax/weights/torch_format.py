"""Weights of the official PyTorch RotNet (FeatureLearningRotNet), imported.

The official code saves every network as
``torch.save({'epoch': N, 'network': net.state_dict()}, file)``
(``algorithms/Algorithm.py``), e.g. ``model_net_epoch200`` for the CIFAR-10
RotNet and ``classifier_net_epoch100`` for a classifier trained on its
features. This module reads such files (the zip format of PyTorch >= 1.6,
the legacy pickle format of PyTorch 0.2 / Python 2, or a bare state dict)
into this package's trees:

* :func:`read`: a ``NetworkInNetwork`` backbone (NIN-3, 4, 5... any
  number of blocks >= 3) or an ``AlexNet`` backbone (the released
  ``ImageNet_RotNet_AlexNet`` model; told apart by its keys) as a
  :class:`types.Weights`, its variables in exactly the tree of
  ``models.init_variables(spec)``; :func:`read_spec` infers its spec alone
  (from the tensors' shapes; nothing converted);
* :func:`read_heads`: a ``NonLinearClassifier`` of type
  ``MultLayer`` (our ``multlayer`` head) or ``NIN_ConvBlock3`` (our
  ``conv_block`` head) as a :class:`types.Heads`; or, on an AlexNet, the
  ImageNet classifier files: ``MultipleLinearClassifiers`` (our ``linear``
  heads, one per block, each with its own pool side) and
  ``MultipleNonLinearClassifiers`` of type ``Alexnet_conv4`` /
  ``Alexnet_conv5`` (our ``alexnet_nonlinear`` heads).

and writes them:

* :func:`write`: a NIN or AlexNet backbone (its classifier included) as
  ``torch.save({'epoch': N, 'network': state_dict})`` with the official
  keys and layouts, in the order the official module's ``state_dict()``
  lists them: the file loads with ``load_state_dict(..., strict=True)``
  into the official ``NetworkInNetwork`` / ``AlexNet`` (at width 1; a
  narrower network into one with its channels scaled likewise), and
  :func:`read` gives back the same arrays, bit for bit. Heads are not
  written (the official classifiers are files of their own);
  :func:`state_dict` is the same dict as numpy arrays, without PyTorch.

The layouts differ only in conventions: PyTorch convolutions are OIHW
(ours HWIO), linear weights ``[out, in]`` (ours ``[in, out]``), BatchNorm
``weight``/``running_mean``/``running_var`` are our ``scale``/``mean``/
``var``, and the ``MultLayer`` head flattens NCHW features channel-major
where ours flattens NHWC features (rows of its first linear layer are
permuted accordingly).

Files are unpickled with ``torch.load(..., weights_only=True)``: a file that
would need to run code to load is refused, never executed.

``use_avg_on_conv3``: the official ``NetworkInNetwork`` adds an average pool
after block 3 when it has more than 3 blocks and ``use_avg_on_conv3`` is
True (its default). Every official CIFAR-10 config that trains a NIN with
more than 3 blocks (``CIFAR10_RotNet_NIN4blocks`` and the classifiers on
it) sets it to False, as our NIN does; a pool has no weights, so a file
trained with it cannot be told apart by its keys. Import only networks
trained with ``use_avg_on_conv3=False`` (or with 3 blocks, where it has no
effect).

The official layout has no place for the image size or the input
normalisation: a file is read back as the official networks were trained
(a 32-pixel NIN on CIFAR-10's normalisation; a 224-pixel AlexNet, or the
smallest size its fc layer fits, on ImageNet's). :func:`unrecorded` says
where the weights written differ from that.

BatchNorm's ``num_batches_tracked`` is not written: the official files
(PyTorch 0.2) have none, and PyTorch's BatchNorm fills in a missing one
when it loads a state dict.

PyTorch is an optional dependency (``pip install -e '.[torch]'``); only
this module imports it, and only when a file is read or written.
"""

import collections
import math
import os
import pickle
import re
from typing import Any

import jax
import numpy as np
from flax import nnx

from rotnet_jax import config_schema
from rotnet_jax import models
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.errors import first_line
from rotnet_jax.models import alexnet
from rotnet_jax.models import nin
from rotnet_jax.weights import types
from rotnet_jax.workdir import filesystem

# What read_kind says a file holds.
BACKBONE = 'backbone'
MULTLAYER = 'multlayer'
CONV_BLOCK = 'conv_block'
LINEAR = 'linear'
ALEXNET_NONLINEAR = 'alexnet_nonlinear'

# Images of the official CIFAR-10 networks.
IMAGE_SIZE = 32
# Images of the official ImageNet / Places205 AlexNet.
ALEXNET_IMAGE_SIZE = 224
# The released AlexNet expects RGB in [0, 1] normalised with these (its
# README); on this package's 0..255 scale.
IMAGENET_MEAN_RGB = config_schema.IMAGENET_MEAN_RGB
IMAGENET_STD_RGB = config_schema.IMAGENET_STD_RGB
# The block a classifier reads when its input shape fits several (the
# official CIFAR-10 classifiers all read conv2).
DEFAULT_BLOCK = 'conv2'
# Names listed in one message, at most.
_LISTED = 6
# The endings of a PyTorch file by which the export tells its format (the
# official files have none: any name but *.safetensors reads as one).
SUFFIXES = ('.pth', '.pt')

_BACKBONE_PREFIX = '_feature_blocks.'
_HEAD_PREFIX = 'classifier.'
_BLOCK_CLASSIFIER = re.compile(r'^_feature_blocks\.(\d+)\.Classifier\.weight$')
# The official Multiple*Classifiers: classifier i under classifiers.i.; a
# single classifier file under classifier.
_MULTI_HEAD = re.compile(r'^classifiers\.(\d+)\.classifier\.')
# Layer names of the ImageNet classifiers (sic, as the official code).
_LINEAR_OUTPUT = 'LiniearClassifier.'
_ALEXNET_OUTPUT = 'LinearF.'
# BatchNorm's batch counter (PyTorch >= 0.4.1): not a weight, and absent
# from the official files (PyTorch 0.2); accepted and ignored.
_IGNORED_SUFFIX = '.num_batches_tracked'

# How one PyTorch tensor becomes one of our arrays.
_COPY = 'copy'
_CONV = 'conv'  # OIHW -> HWIO.
_LINEAR = 'linear'  # [out, in] -> [in, out].
_LINEAR_CHW = 'linear_chw'  # [out, C*H*W] -> [H*W*C, out] (NCHW flatten).


def _import_torch(purpose: str = 'reading an official PyTorch file'):
  # Lazy: PyTorch is an optional extra, needed only to read or write these
  # files.
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError(
        f'{purpose} needs PyTorch, which is not installed: '
        "pip install -e '.[torch]' (or pip install torch)") from e
  return torch


def _describe_keys(keys) -> str:
  keys = sorted(keys)
  text = ', '.join(keys[:_LISTED])
  return text + (f' (and {len(keys) - _LISTED} more)'
                 if len(keys) > _LISTED else '')


def _load(path: str, *, arrays: bool = True
          ) -> tuple[dict[str, Any], int | None, str]:
  """``(state dict, epoch or None, absolute path)`` of an official file.

  Args:
    path: the file.
    arrays: the state dict's tensors as float32 numpy arrays; if False as
      their shapes alone (``jax.ShapeDtypeStruct``: enough to tell the
      network and its spec, with no tensor converted).
  """
  full = filesystem.absolute(os.path.expanduser(path))
  if not filesystem.resolve(full).exists():
    raise MissingInputError(f'{path!r} does not exist: pass an official '
                            'FeatureLearningRotNet file (e.g. '
                            'model_net_epoch200)')
  if filesystem.resolve(full).is_dir():
    raise InputError(f'{full} is a folder, not an official PyTorch file')
  torch = _import_torch()
  try:
    # weights_only: tensors, dicts and numbers only; any other class in the
    # pickle (code that would run while loading) is refused. A gs:// file
    # is read from a local copy (torch reads local files only).
    with filesystem.local_copy(full) as local:
      obj = torch.load(local, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    if 'weights_only' in str(e) or 'Unsupported global' in str(e):
      raise InputError(
          f'{full} would need to run code to load (it pickles '
          f'{_unsupported_global(e)}): refused for safety. Official '
          'FeatureLearningRotNet files hold only tensors; re-save the state '
          "dict as torch.save({'epoch': N, 'network': net.state_dict()}, "
          'file) if you trust it') from e
    raise InputError(f'{full} is not a PyTorch file ({first_line(e)}): '
                     'pass an official FeatureLearningRotNet file') from e
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(
        f'{full} cannot be read as a PyTorch file, it may be truncated or '
        f'not a PyTorch file at all ({type(e).__name__}: {first_line(e)}): '
        'pass an official FeatureLearningRotNet file') from e
  epoch = None
  if isinstance(obj, dict) and 'network' in obj:
    epoch = obj.get('epoch')
    epoch = int(epoch) if isinstance(epoch, (int, np.integer)) else None
    obj = obj['network']
  if not isinstance(obj, dict) or not obj:
    raise InputError(
        f'{full} holds a {type(obj).__name__}, not a state dict: expected '
        "{'epoch': N, 'network': state_dict} as the official code saves, or "
        'a bare state dict')
  state = {}
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, torch.Tensor):
      raise InputError(
          f'{full}: entry {key!r} of its state dict is a '
          f'{type(value).__name__}, not a tensor: not a network\'s state '
          'dict')
    state[key] = (value.detach().to(torch.float32).numpy() if arrays else
                  jax.ShapeDtypeStruct(tuple(value.shape), np.float32))
  # nn.DataParallel saves every key under "module.".
  if all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  return state, epoch, full


def _unsupported_global(error: Exception) -> str:
  match = re.search(r'(?:Unsupported global|GLOBAL)\s*:?\s*(?:GLOBAL\s+)?'
                    r'([\w.]+)', str(error))
  return f'the class {match.group(1)}' if match else 'a Python class'


def _file_kind(state: dict[str, Any], path: str) -> str:
  """Which official network `state` is, or an InputError naming its keys."""
  keys = [k for k in state if not k.endswith(_IGNORED_SUFFIX)]
  if any(k.startswith(_BACKBONE_PREFIX) for k in keys):
    return BACKBONE
  if any(k.startswith(_HEAD_PREFIX + 'Liniear_1.') for k in keys):
    return MULTLAYER
  if any(k.startswith(_HEAD_PREFIX + 'Block3_ConvB1.') for k in keys):
    return CONV_BLOCK
  for prefix in _head_prefixes(keys):
    if any(k.startswith(prefix + _LINEAR_OUTPUT) for k in keys):
      return LINEAR
    if any(k.startswith(prefix + _ALEXNET_OUTPUT) for k in keys):
      return ALEXNET_NONLINEAR
  if any(k.startswith('classifiers.') for k in keys):
    raise InputError(
        f'{path} holds several CIFAR-10 classifiers '
        '(MultipleNonLinearClassifiers, keys classifiers.N.*): only a single '
        'NonLinearClassifier file (MultLayer or NIN_ConvBlock3), or the '
        'ImageNet AlexNet classifiers (LiniearClassifier, Alexnet_conv4/5), '
        'can be imported')
  raise InputError(
      f'{path} is not an official FeatureLearningRotNet NIN, AlexNet or '
      f'classifier: its keys ({_describe_keys(keys)}) have none of '
      f'{_BACKBONE_PREFIX}*, {_HEAD_PREFIX}Liniear_1.*, '
      f'{_HEAD_PREFIX}Block3_ConvB1.*, classifiers.N.classifier.'
      f'{_LINEAR_OUTPUT}* or classifiers.N.classifier.{_ALEXNET_OUTPUT}*')


def _head_prefixes(keys) -> list[str]:
  """``classifiers.0.classifier.``, ... (in order), or ``classifier.``."""
  indices = sorted({int(m.group(1)) for m in map(_MULTI_HEAD.match, keys)
                    if m})
  return ([f'classifiers.{i}.classifier.' for i in indices] if indices
          else [_HEAD_PREFIX])


def read_kind(path: str) -> tuple[str, int | None]:
  """``(kind, epoch)`` of an official file: :data:`BACKBONE`,
  :data:`MULTLAYER` or :data:`CONV_BLOCK`, and its saved epoch (None if
  it has none).

  Raises:
    InputError: see :func:`read`.
  """
  state, epoch, full = _load(path, arrays=False)
  return _file_kind(state, full), epoch


def _torch_shape(shape: tuple[int, ...], how: str) -> tuple[int, ...]:
  """The PyTorch shape of a tensor that becomes an array of `shape`."""
  if how == _CONV:
    return (shape[3], shape[2], shape[0], shape[1])
  if how in (_LINEAR, _LINEAR_CHW):
    return (shape[1], shape[0])
  return tuple(shape)


def _convert(value: np.ndarray, how: str, shape: tuple[int, ...],
             feature_shape: tuple[int, ...] | None = None) -> np.ndarray:
  if how == _CONV:
    return value.transpose(2, 3, 1, 0)
  if how == _LINEAR:
    return value.T
  if how == _LINEAR_CHW:
    # Official input index c*H*W + h*W + w; ours (h*W + w)*C + c.
    height, width, channels = feature_shape
    return (value.T.reshape(channels, height, width, shape[1])
            .transpose(1, 2, 0, 3).reshape(shape))
  return value


def _conv_bn_entries(torch_prefix: str, path: tuple) -> list[tuple]:
  """The tensors of one official ``BasicBlock`` (conv, BatchNorm)."""
  layers = f'{torch_prefix}layers.'
  return [(f'{layers}Conv.weight', ('params',) + path + ('conv', 'kernel'),
           _CONV)] + _batch_norm_entries(f'{layers}BatchNorm.',
                                         path + ('norm',))


def _batch_norm_entries(torch_prefix: str, path: tuple) -> list[tuple]:
  return [
      (f'{torch_prefix}weight', ('params',) + path + ('scale',), _COPY),
      (f'{torch_prefix}bias', ('params',) + path + ('bias',), _COPY),
      (f'{torch_prefix}running_mean', ('batch_stats',) + path + ('mean',),
       _COPY),
      (f'{torch_prefix}running_var', ('batch_stats',) + path + ('var',),
       _COPY),
  ]


def _linear_entries(torch_prefix: str, name: str, how: str = _LINEAR,
                    bias: bool = True) -> list[tuple]:
  entries = [(f'{torch_prefix}weight', ('params', name, 'kernel'), how)]
  if bias:
    entries.append((f'{torch_prefix}bias', ('params', name, 'bias'), _COPY))
  return entries


def _backbone_entries(num_blocks: int) -> list[tuple]:
  """``(torch key, our path, conversion)`` of every tensor of a NIN."""
  entries = []
  for s in range(num_blocks):
    for j in range(3):
      entries += _conv_bn_entries(
          f'{_BACKBONE_PREFIX}{s}.Block{s + 1}_ConvB{j + 1}.',
          ('blocks', s, 'layers', j))
  return entries + _linear_entries(
      f'{_BACKBONE_PREFIX}{num_blocks}.Classifier.', 'classifier')


def _head_entries(head_type: str) -> list[tuple]:
  """``(torch key, our path, conversion)`` of an official classifier."""
  output = _linear_entries(f'{_HEAD_PREFIX}Liniear_F.', 'output')
  if head_type == MULTLAYER:
    return (_linear_entries(f'{_HEAD_PREFIX}Liniear_1.', 'hidden1',
                            _LINEAR_CHW, bias=False) +
            _batch_norm_entries(f'{_HEAD_PREFIX}BatchNorm_1.', ('norm1',)) +
            _linear_entries(f'{_HEAD_PREFIX}Liniear_2.', 'hidden2',
                            bias=False) +
            # Sic: the official code names its second BatchNorm "BatchNorm2d".
            _batch_norm_entries(f'{_HEAD_PREFIX}BatchNorm2d.', ('norm2',)) +
            output)
  entries = []
  for j in range(3):
    entries += _conv_bn_entries(f'{_HEAD_PREFIX}Block3_ConvB{j + 1}.',
                                ('block', 'layers', j))
  return entries + output


def _path_key(path) -> tuple:
  return tuple(getattr(k, 'key', k) for k in path)


def _fill(target, state: dict[str, np.ndarray], entries: list[tuple],
          path: str, what: str, feature_shape=None) -> dict[str, Any]:
  """`target`'s tree (arrays or shapes), filled from `state` by `entries`.

  Raises:
    InputError: missing or extra keys, wrong shapes, non-finite values.
  """
  present = {k for k in state if not k.endswith(_IGNORED_SUFFIX)}
  expected = {key for key, _, _ in entries}
  missing, extra = expected - present, present - expected
  if missing or extra:
    parts = []
    if missing:
      parts.append(f'missing keys {_describe_keys(missing)}')
    if extra:
      parts.append(f'unexpected keys {_describe_keys(extra)}')
    raise InputError(f'{path} does not hold {what}: ' + '; '.join(parts))
  shapes = {_path_key(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  values, wrong = {}, []
  for key, our_path, how in entries:
    if our_path not in shapes:  # A bug of this module, not of the file.
      raise AssertionError(f'{our_path} is not in the model tree')
    want = _torch_shape(shapes[our_path], how)
    if tuple(state[key].shape) != want:
      wrong.append(f'{key}: {tuple(state[key].shape)}, expected {want}')
      continue
    values[our_path] = np.ascontiguousarray(
        _convert(state[key], how, shapes[our_path], feature_shape),
        np.float32)
  if wrong:
    raise InputError(f'{path} does not hold {what}: wrong shapes: ' +
                     '; '.join(wrong[:_LISTED]) +
                     (f' (and {len(wrong) - _LISTED} more)'
                      if len(wrong) > _LISTED else ''))
  if set(values) != set(shapes):  # A bug of this module, not of the file.
    raise AssertionError(f'unfilled: {sorted(set(shapes) - set(values))}')
  # Keyed as the file names them; counted after the conversion to
  # float32, which is what would be used (a float64 beyond float32's
  # range becomes an infinity).
  types.check_finite(path, {key: values[our_path]
                            for key, our_path, _ in entries})
  return jax.tree_util.tree_map_with_path(
      lambda p, _: values[_path_key(p)], target)


def _backbone_spec(num_blocks: int, width: float, num_classes: int,
                   name: str = 'nin', image_size: int = IMAGE_SIZE
                   ) -> dict[str, Any]:
  config = config_schema.defaults()
  with config.unlocked():
    config.model.name = name
    config.model.num_blocks = num_blocks
    config.model.width = width
  return models.backbone_spec(config.model, image_size=image_size,
                              num_classes=num_classes)


# The official AlexNet's ``_feature_blocks`` list: conv1, pool1, conv2,
# pool2, conv3, conv4, conv5, pool5, fc_block, classifier. Only these
# indices hold weights.
_ALEXNET_CONV_INDEX = {'conv1': 0, 'conv2': 2, 'conv3': 4, 'conv4': 5,
                       'conv5': 6}
_ALEXNET_FC_INDEX = 8
_ALEXNET_CLASSIFIER_INDEX = 9
# Inside the fc block (Flatten, Linear, BN, ReLU, Linear, BN, ReLU).
_ALEXNET_FC_LAYERS = {'linear1': 1, 'norm1': 2, 'linear2': 4, 'norm2': 5}
_ALEXNET_FIRST = f'{_BACKBONE_PREFIX}0.0.weight'
_ALEXNET_CLASSIFIER = (f'{_BACKBONE_PREFIX}{_ALEXNET_CLASSIFIER_INDEX}.0.'
                       'weight')
_ALEXNET_FC1 = (f'{_BACKBONE_PREFIX}{_ALEXNET_FC_INDEX}.'
                f"{_ALEXNET_FC_LAYERS['linear1']}.weight")


def _is_alexnet(state: dict[str, Any]) -> bool:
  return _ALEXNET_FIRST in state


def _alexnet_entries() -> list[tuple]:
  """``(torch key, our path, conversion)`` of every tensor of an AlexNet."""
  entries = []
  for name, index in _ALEXNET_CONV_INDEX.items():
    prefix = f'{_BACKBONE_PREFIX}{index}.'
    entries += [
        (f'{prefix}0.weight', ('params', name, 'conv', 'kernel'), _CONV),
        (f'{prefix}0.bias', ('params', name, 'conv', 'bias'), _COPY),
    ] + _batch_norm_entries(f'{prefix}1.', (name, 'norm'))
  fc = f'{_BACKBONE_PREFIX}{_ALEXNET_FC_INDEX}.'
  layers = _ALEXNET_FC_LAYERS
  entries += [
      (f"{fc}{layers['linear1']}.weight",
       ('params', 'fc_block', 'linear1', 'kernel'), _LINEAR_CHW),
      (f"{fc}{layers['linear2']}.weight",
       ('params', 'fc_block', 'linear2', 'kernel'), _LINEAR),
  ] + _batch_norm_entries(f"{fc}{layers['norm1']}.", ('fc_block', 'norm1')
                          ) + _batch_norm_entries(f"{fc}{layers['norm2']}.",
                                                  ('fc_block', 'norm2'))
  return entries + _linear_entries(
      f'{_BACKBONE_PREFIX}{_ALEXNET_CLASSIFIER_INDEX}.0.', 'classifier')


def _pool5_shape(spec) -> tuple[int, int, int]:
  """``(H, W, C)`` of pool5, the input of the first fc layer."""
  side = alexnet.feature_sides(spec['image_size'])['pool5']
  return (side, side, models.feature_shapes(spec)['conv5'][-1])


def _infer_alexnet_spec(state: dict[str, Any], path: str,
                        image_size: int | None) -> dict[str, Any]:
  """The spec of the official AlexNet in `state`, from its shapes.

  The image size is not in the file; the first fc layer's inputs (pool5's
  H x W x C) say which sizes fit: `image_size` if given, else 224 when it
  fits (the official size), else the smallest that fits.
  """
  for key, ndim in ((_ALEXNET_FIRST, 4), (_ALEXNET_CLASSIFIER, 2),
                    (_ALEXNET_FC1, 2)):
    if key not in state or state[key].ndim != ndim:
      raise InputError(
          f'{path} does not hold an official AlexNet: {key} (a {ndim}-D '
          'weight) is ' + ('missing' if key not in state else
                           f'of shape {state[key].shape}'))
  channels = state[_ALEXNET_FIRST].shape[0]
  base = alexnet.CONV_LAYERS[0][1]
  width = channels / base
  if nin.scaled_channels(base, width) != channels:
    raise InputError(f'{path}: {_ALEXNET_FIRST} has {channels} output '
                     f"channels, not a width of AlexNet's {base}")
  num_classes = state[_ALEXNET_CLASSIFIER].shape[0]
  fc_inputs = state[_ALEXNET_FC1].shape[1]
  conv5 = nin.scaled_channels(alexnet.CONV_LAYERS[-1][1], width)

  def fits(size):
    side = alexnet.feature_sides(size)['pool5']
    return side >= 1 and side * side * conv5 == fc_inputs

  if image_size is None:
    candidates = [ALEXNET_IMAGE_SIZE] + list(
        range(alexnet.MIN_IMAGE_SIZE, 4097))
    image_size = next((s for s in candidates if fits(s)), None)
    if image_size is None:
      raise InputError(f'{path}: its first fc layer takes {fc_inputs} '
                       f'inputs, which no image size gives ({conv5} '
                       'channels at conv5)')
  elif image_size < alexnet.MIN_IMAGE_SIZE or not fits(image_size):
    raise InputError(
        f'{path}: image size {image_size} does not fit its first fc layer '
        f'({fc_inputs} inputs = pool5 H x W x {conv5})')
  return _backbone_spec(alexnet.NUM_CONV_BLOCKS, width, num_classes,
                        name=alexnet.AlexNetBackbone.name,
                        image_size=image_size)


def _infer_backbone_spec(state: dict[str, Any], path: str
                         ) -> dict[str, Any]:
  """The spec of the official NIN in `state`, from its keys and shapes."""
  blocks = [int(m.group(1)) for m in map(_BLOCK_CLASSIFIER.match, state) if m]
  if len(blocks) != 1:
    raise InputError(
        f'{path} does not hold an official NetworkInNetwork: expected one '
        f'{_BACKBONE_PREFIX}N.Classifier.weight (N = the number of blocks), '
        f'found {len(blocks)}')
  num_blocks = blocks[0]
  if num_blocks < 3:
    raise InputError(f'{path}: a NetworkInNetwork of {num_blocks} blocks; '
                     'the official NIN (and ours) has at least 3')
  first = f'{_BACKBONE_PREFIX}0.Block1_ConvB1.layers.Conv.weight'
  if first not in state or state[first].ndim != 4:
    raise InputError(f'{path} does not hold an official NetworkInNetwork: '
                     f'{first} (a 4-D convolution kernel) is '
                     + ('missing' if first not in state else
                        f'of shape {state[first].shape}'))
  channels = state[first].shape[0]
  base = nin._BLOCK_CHANNELS[0]  # pylint: disable=protected-access
  width = channels / base
  if nin.scaled_channels(base, width) != channels:
    raise InputError(f'{path}: {first} has {channels} output channels, not a '
                     f"width of the NIN's {base}")
  num_classes = state[f'{_BACKBONE_PREFIX}{num_blocks}.Classifier.weight'
                      ].shape[0]
  return _backbone_spec(num_blocks, width, num_classes)


def _spec_of(state: dict[str, Any], path: str, image_size: int | None
             ) -> dict[str, Any]:
  """The spec of the official backbone in `state` (see :func:`read`)."""
  kind = _file_kind(state, path)
  if kind != BACKBONE:
    raise InputError(
        f'{path} holds an official {kind} classifier, not a backbone: '
        f'import it with python -m rotnet_jax.import_torch {path} '
        '--backbone=BACKBONE_FILE_OR_WORKDIR --workdir=OUT')
  if _is_alexnet(state):
    return _infer_alexnet_spec(state, path, image_size)
  if image_size is not None and image_size != IMAGE_SIZE:
    raise InputError(f'{path} holds a NIN, whose images are '
                     f'{IMAGE_SIZE} pixels: image size {image_size} is only '
                     'for an AlexNet')
  return _infer_backbone_spec(state, path)


def read_spec(path: str, *, image_size: int | None = None
              ) -> dict[str, Any]:
  """The spec :func:`read` gives, from the tensors' shapes alone.

  torch.load still reads the whole file (the only way to see the shapes),
  but no tensor is converted.

  Raises:
    MissingInputError, InputError: as :func:`read` does for the same file,
      except for the errors only the tensors' values show.
  """
  state, _, full = _load(path, arrays=False)
  return _spec_of(state, full, image_size)


def read(path: str, *, image_size: int | None = None) -> types.Weights:
  """An official NIN or AlexNet backbone file as :class:`types.Weights`.

  Args:
    path: a file the official code saved (``model_net_epochN``), or a bare
      state dict of its ``NetworkInNetwork`` or ``AlexNet``.
    image_size: AlexNet only: the image size it was trained on (default
      224, or the smallest size its fc layer fits; see
      :func:`_infer_alexnet_spec`).

  Returns:
    The weights: spec ``{'name': 'nin', 'num_classes', 'num_blocks',
    'width', 'image_size': 32}`` (NIN) or ``{'name': 'alexnet', ...,
    'num_blocks': 5, 'image_size': 224}`` inferred from the keys and
    shapes, variables in the tree of ``models.init_variables(spec)``, the
    normalisation the official code used (CIFAR-10's; ImageNet's for
    AlexNet).

  Raises:
    MissingInputError: no such file.
    InputError: PyTorch is not installed; the file is damaged, not a
      PyTorch file, needs code to load, or holds another network (a
      classifier, keys of another architecture, missing or extra keys,
      wrong shapes), naming the file and the keys.
  """
  state, _, full = _load(path)  # The epoch: read_kind's.
  spec = _spec_of(state, full, image_size)
  origin = {'pretrained': full, 'pretrained_format': types.TORCH,
            'pretrained_step': None}
  target = models.abstract_variables(spec)
  if _is_alexnet(state):
    variables = _fill(
        target, state, _alexnet_entries(), full,
        f"an official AlexNet (width {spec['width']}, "
        f"{spec['num_classes']} classes, {spec['image_size']}-pixel images)",
        feature_shape=_pool5_shape(spec))
    return types.Weights(spec, variables, origin, mean_rgb=IMAGENET_MEAN_RGB,
                         std_rgb=IMAGENET_STD_RGB)
  variables = _fill(target, state, _backbone_entries(spec['num_blocks']),
                    full, f"an official NIN-{spec['num_blocks']} (width "
                    f"{spec['width']}, {spec['num_classes']} classes)")
  return types.Weights(spec, variables, origin)


def _head_block(head_type: str, state, spec, path: str, block: str | None
                ) -> tuple[str, tuple[int, ...]]:
  """The block a classifier reads, from its input shape (or `block`)."""
  shapes = models.feature_shapes(spec)
  if head_type == MULTLAYER:
    key = f'{_HEAD_PREFIX}Liniear_1.weight'
    size = (state[key].shape[-1] if key in state and state[key].ndim == 2
            else None)
    fits = [b for b, s in shapes.items() if int(np.prod(s)) == size]
    what = f'{size} inputs'
  else:
    key = f'{_HEAD_PREFIX}Block3_ConvB1.layers.Conv.weight'
    size = (state[key].shape[1] if key in state and state[key].ndim == 4
            else None)
    fits = [b for b, s in shapes.items() if s[-1] == size]
    what = f'{size} input channels'
  if key not in state:
    raise InputError(f'{path}: an official {head_type} classifier has the '
                     f'key {key}, this file does not')
  valid = ', '.join(f'{b} {"x".join(map(str, s))}' for b, s in shapes.items())
  if block is not None:
    if block not in shapes:
      raise InputError(f'--block={block}: the backbone has the blocks '
                       f'{list(shapes)}')
    if block not in fits:
      raise InputError(
          f'{path}: its classifier ({key}: {what}) does not fit the '
          f'features of {block} {"x".join(map(str, shapes[block]))} of the '
          f'backbone ({valid})')
    return block, shapes[block]
  if not fits:
    raise InputError(
        f'{path}: its classifier ({key}: {what}) fits no block of the '
        f'backbone ({valid}): pass the backbone it was trained on')
  chosen = DEFAULT_BLOCK if DEFAULT_BLOCK in fits else fits[0]
  return chosen, shapes[chosen]


def read_heads(path: str, backbone_spec: dict[str, Any],
               block: str | None = None) -> types.Heads:
  """An official classifier file as :class:`types.Heads` on one block.

  Args:
    path: a ``NonLinearClassifier`` file of the official code (``MultLayer``
      or ``NIN_ConvBlock3``), saved like a backbone.
    backbone_spec: the spec of the backbone it was trained on.
    block: the block it reads; by default inferred from its input shape
      (conv1 is 16x16x96, the later blocks 8x8x192 at width 1: when
      several fit, :data:`DEFAULT_BLOCK`, which every official CIFAR-10
      classifier reads).

  Raises:
    InputError: the file is not an official classifier, its shapes fit no
      block (or not `block`), or it has a hidden width other than ours
      (200, i.e. ``num_classes * 20`` for 10 classes).
  """
  state, _, full = _load(path)
  head_type = _file_kind(state, full)
  if head_type == BACKBONE:
    raise InputError(f'{full} holds an official backbone, not a classifier: '
                     'pass it as --backbone (or import it alone)')
  if head_type in (LINEAR, ALEXNET_NONLINEAR):
    return _read_alexnet_heads(state, full, head_type, backbone_spec, block)
  if backbone_spec['name'] != 'nin':
    raise InputError(f'{full} holds an official {head_type} classifier of '
                     f"the CIFAR-10 NIN, but the backbone is a "
                     f"{backbone_spec['name']}")
  output = f'{_HEAD_PREFIX}Liniear_F.weight'
  if output not in state or state[output].ndim != 2:
    raise InputError(f'{full} does not hold an official {head_type} '
                     f'classifier: {output} (a 2-D weight) is missing')
  num_classes = state[output].shape[0]
  block, feature_shape = _head_block(head_type, state, backbone_spec, full,
                                     block)
  head = nnx.eval_shape(lambda: models.heads.make_head(
      head_type, feature_shape, num_classes,
      models.head_options(backbone_spec, linear_pool_size=6),
      rngs=nnx.Rngs(0)))
  target = models.variables(head)
  variables = _fill(
      target, state, _head_entries(head_type), full,
      f'an official {head_type} classifier on {block} '
      f'{"x".join(map(str, feature_shape))} with {num_classes} classes '
      f'(hidden width {models.heads.MULTLAYER_HIDDEN} for MultLayer)',
      feature_shape=feature_shape)
  return types.Heads(head_type, (block,), num_classes,
                       {'params': {block: variables['params']},
                        'batch_stats': {block: variables['batch_stats']}})


def _linear_head_entries(prefix: str) -> list[tuple]:
  """An official ``LinearClassifier`` (its BatchNorm has no affine)."""
  return [
      (f'{prefix}BatchNorm.running_mean', ('batch_stats', 'norm', 'mean'),
       _COPY),
      (f'{prefix}BatchNorm.running_var', ('batch_stats', 'norm', 'var'),
       _COPY),
      (f'{prefix}{_LINEAR_OUTPUT}weight', ('params', 'output', 'kernel'),
       _LINEAR_CHW),
      (f'{prefix}{_LINEAR_OUTPUT}bias', ('params', 'output', 'bias'), _COPY),
  ]


def _alexnet_head_entries(prefix: str, conv: bool) -> list[tuple]:
  """An official ``Alexnet_conv4`` (`conv`) or ``Alexnet_conv5`` head."""
  entries = []
  if conv:
    entries += [
        (f'{prefix}ConvB5.0.weight', ('params', 'block', 'conv', 'kernel'),
         _CONV),
        (f'{prefix}ConvB5.0.bias', ('params', 'block', 'conv', 'bias'),
         _COPY),
    ] + _batch_norm_entries(f'{prefix}ConvB5.1.', ('block', 'norm'))
  return entries + [
      (f'{prefix}Linear1.weight', ('params', 'linear1', 'kernel'),
       _LINEAR_CHW),
      (f'{prefix}Liniear2.weight', ('params', 'linear2', 'kernel'), _LINEAR),
  ] + _batch_norm_entries(f'{prefix}BatchNorm1.', ('norm1',)) + (
      _batch_norm_entries(f'{prefix}BatchNorm2.', ('norm2',))) + (
          _linear_entries(f'{prefix}{_ALEXNET_OUTPUT}', 'output'))


def _tensor(state, key: str, path: str, what: str) -> np.ndarray:
  if key not in state or state[key].ndim < 1:
    raise InputError(f'{path} does not hold {what}: {key} is missing')
  return state[key]


def _read_alexnet_heads(state, path: str, head_type: str, spec,
                        block: str | None) -> types.Heads:
  """The official ImageNet classifiers of an AlexNet file, as our heads.

  A ``MultipleLinearClassifiers`` file's classifiers read conv1..conv5 in
  order (the official ``out_feat_keys``): classifier i goes to the next
  block, in network order, with its input channels; its pool side comes
  from its linear layer's inputs. A ``MultipleNonLinearClassifiers`` file's
  ``Alexnet_conv4`` classifier (with ``ConvB5``) reads conv4, its
  ``Alexnet_conv5`` classifier conv5. `block` names the block of a file
  with a single classifier.
  """
  what = f'official AlexNet {head_type} classifiers'
  if spec['name'] != alexnet.AlexNetBackbone.name:
    raise InputError(f'{path} holds {what}: pass the AlexNet backbone they '
                     f"were trained on, not a {spec['name']}")
  keys = [k for k in state if not k.endswith(_IGNORED_SUFFIX)]
  prefixes = _head_prefixes(keys)
  if block is not None and len(prefixes) != 1:
    raise InputError(f'--block={block}: {path} holds {len(prefixes)} '
                     'classifiers, whose blocks are fixed by their order')
  shapes = models.feature_shapes(spec)
  names = models.block_names(spec)
  if block is not None and block not in shapes:
    raise InputError(f'--block={block}: the backbone has the blocks '
                     f'{list(shapes)}')
  plan, start, num_classes = [], 0, set()
  for prefix in prefixes:
    if head_type == LINEAR:
      mean = _tensor(state, f'{prefix}BatchNorm.running_mean', path, what)
      weight = _tensor(state, f'{prefix}{_LINEAR_OUTPUT}weight', path, what)
      channels, inputs = mean.shape[0], weight.shape[-1]
      side = math.isqrt(inputs // channels)
      if side < 1 or side * side * channels != inputs:
        raise InputError(f'{path}: {prefix}{_LINEAR_OUTPUT}weight takes '
                         f'{inputs} inputs, not a square pool of its '
                         f'{channels} channels')
      fits = [b for b in names[start:] if shapes[b][-1] == channels]
      chosen = block or (fits[0] if fits else None)
      if chosen is None or shapes[chosen][-1] != channels:
        raise InputError(
            f'{path}: classifier {prefix} reads {channels} channels, which '
            f'no block of the backbone (after those already taken) has: '
            + ', '.join(f'{b} {"x".join(map(str, s))}'
                        for b, s in shapes.items()))
      start = names.index(chosen) + 1
    else:
      weight = _tensor(state, f'{prefix}{_ALEXNET_OUTPUT}weight', path, what)
      side = 6  # Not used by this head.
      chosen = ('conv4' if any(k.startswith(f'{prefix}ConvB5.') for k in keys)
                else 'conv5')
      if block is not None and block != chosen:
        raise InputError(f'{path}: its classifier is the official '
                         f'Alexnet_{chosen} one, not one on {block}')
    num_classes.add(weight.shape[0])
    plan.append((prefix, chosen, side))
  if len(num_classes) != 1:
    raise InputError(f'{path}: its classifiers have different numbers of '
                     f'classes {sorted(num_classes)}')
  (classes,) = num_classes
  chosen_blocks = [b for _, b, _ in plan]
  if len(set(chosen_blocks)) != len(chosen_blocks):
    raise InputError(f'{path}: two classifiers read the same block '
                     f'({chosen_blocks})')
  params, batch_stats = {}, {}
  for prefix, chosen, side in plan:
    head = nnx.eval_shape(lambda b=chosen, s=side: models.heads.make_head(
        head_type, shapes[b], classes,
        models.head_options(spec, linear_pool_size=s), block=b,
        rngs=nnx.Rngs(0)))
    if head_type == LINEAR:
      entries = _linear_head_entries(prefix)
      flat_shape = (side, side, shapes[chosen][-1])
    else:
      conv = chosen == 'conv4'
      entries = _alexnet_head_entries(prefix, conv)
      height = shapes[chosen][0]
      pooled = (height - 3) // 2 + 1
      flat_shape = (pooled, pooled, head.linear1.kernel.shape[0] //
                    (pooled * pooled))
    substate = {k: v for k, v in state.items() if k.startswith(prefix)}
    variables = _fill(models.variables(head), substate, entries, path,
                      f'{what} ({prefix} on {chosen} '
                      f'{"x".join(map(str, shapes[chosen]))}, {classes} '
                      'classes)', feature_shape=flat_shape)
    params[chosen] = variables['params']
    batch_stats[chosen] = variables['batch_stats']
  return types.Heads(head_type, tuple(chosen_blocks), classes,
                       {'params': params, 'batch_stats': batch_stats})


# ---------------------------------------------------------------------------
# Writing: our backbone in the official layout.


def _unconvert(value: np.ndarray, how: str,
               feature_shape: tuple[int, ...] | None) -> np.ndarray:
  """The PyTorch tensor (as numpy) of our array `value`: inverts
  :func:`_convert`."""
  if how == _CONV:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
  if how == _LINEAR:
    return value.T
  if how == _LINEAR_CHW:
    # Our input index (h*W + w)*C + c; the official c*H*W + h*W + w.
    height, width, channels = feature_shape
    outputs = value.shape[1]
    return (value.reshape(height, width, channels, outputs)
            .transpose(3, 2, 0, 1).reshape(outputs, -1))
  return value


def _module_order(entries: list[tuple]) -> list[tuple]:
  """`entries` in the order the official ``state_dict()`` lists them.

  A state dict lists modules by their index in each ``ModuleList`` /
  ``Sequential`` and, within one, parameters before buffers; the entries
  are already in that order within a module, so a stable sort on the
  indices suffices (AlexNet's fc block lists its two linear layers first).
  """
  return sorted(entries, key=lambda entry: tuple(
      int(part) for part in entry[0].split('.') if part.isdigit()))


def _layout(spec: dict[str, Any], what: str
            ) -> tuple[list[tuple], tuple[int, ...] | None]:
  """The entries of the backbone `spec` and the input shape of its
  channel-major linear layer (AlexNet's first fc layer; None for a NIN).

  Raises:
    InputError: a backbone without an official PyTorch counterpart.
  """
  if spec.get('name') == alexnet.AlexNetBackbone.name:
    return _alexnet_entries(), _pool5_shape(spec)
  if spec.get('name') == nin.NINBackbone.name:
    return _backbone_entries(spec['num_blocks']), None
  raise InputError(
      f"{what} is a {spec.get('name')!r} backbone: only the NIN and AlexNet "
      'have an official PyTorch layout; export it to a .safetensors file')


def _source(weights: types.Weights) -> str:
  return str(weights.origin.get('pretrained') or 'the weights')


def check_writable(weights: types.Weights) -> None:
  """Raises InputError unless :func:`write` can write `weights`: a NIN or
  AlexNet backbone without heads (only backbones have an official file of
  this layout; the classifiers are files of their own)."""
  source = _source(weights)
  if weights.heads is not None:
    heads = weights.heads
    heads_from = weights.origin.get('heads_from')
    # A frozen evaluation's backbone is another path, which exports alone
    # (a fine-tuned one is in the evaluation's own checkpoint).
    alone = (f'export its backbone ({source}) with --format=torch, or '
             if heads_from and heads_from != source else '')
    raise InputError(
        f'{heads_from or source} holds {heads.head_type} heads on '
        f'{", ".join(heads.blocks)}: only backbones export to PyTorch; '
        f'{alone}export everything, heads included, to a .safetensors file')
  _layout(weights.spec, source)


def state_dict(weights: types.Weights) -> dict[str, np.ndarray]:
  """The official ``state_dict()`` of the backbone of `weights`, in numpy.

  Keys are the official names (``_feature_blocks.0.Block1_ConvB1.layers.
  Conv.weight``, ...; AlexNet's ``_feature_blocks.0.0.weight``, ...) in the
  official module's order; convolution kernels OIHW, linear weights
  ``[out, in]``, AlexNet's first fc layer's inputs in the channel-major
  order of its NCHW flatten; float32, C-contiguous. No
  ``num_batches_tracked`` (see the module docstring).

  Raises:
    InputError: see :func:`check_writable`; or the arrays are not those
      their spec describes, or hold NaN or infinities
      (``types.check_finite``, keyed by the official names).
  """
  check_writable(weights)
  source = _source(weights)
  entries, feature_shape = _layout(weights.spec, source)
  target = models.abstract_variables(weights.spec)
  wanted = {tuple(map(str, _path_key(p))): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  found = {tuple(map(str, _path_key(p))): np.asarray(x)
           for p, x in jax.tree_util.tree_flatten_with_path(
               weights.variables)[0]}
  parts = []
  for label, keys in (('missing', set(wanted) - set(found)),
                      ('unexpected', set(found) - set(wanted))):
    if keys:
      parts.append(f"{label} {_describe_keys('/'.join(k) for k in keys)}")
  parts += [f"{'/'.join(k)} of shape {found[k].shape}, expected {wanted[k]}"
            for k in sorted(set(wanted) & set(found))
            if found[k].shape != wanted[k]][:_LISTED]
  if parts:
    raise InputError(
        f'{source}: not the arrays of its backbone {weights.spec} '
        f"({'; '.join(parts)}): expected the tree of "
        'models.init_variables(spec)')
  state = collections.OrderedDict()
  for key, our_path, how in _module_order(entries):
    state[key] = np.array(
        _unconvert(found[tuple(map(str, our_path))], how, feature_shape),
        np.float32, order='C')
  types.check_finite(source, state)
  return state


def check_output(out: str, *, overwrite: bool) -> str:
  """The absolute path `out` if a PyTorch file may be written there.

  Any name but ``*.safetensors`` (which every reader takes for an exported
  safetensors file); ``.pth`` and ``.pt`` are the usual endings, the
  official files have none (``model_net_epoch200``).

  Raises:
    InputError: empty, ``*.safetensors``, a folder, an existing file
      without `overwrite` (``filesystem.check_output_file``).
  """
  if not out or not out.strip():
    raise InputError('output is empty: name the .pth file to write')
  if out.endswith(types.SAFETENSORS_SUFFIX):
    raise InputError(
        f'output={out!r} ends in {types.SAFETENSORS_SUFFIX}, which the '
        'readers take for a safetensors file: name the PyTorch file '
        f'{" or ".join(SUFFIXES)}')
  suffix = next((s for s in SUFFIXES if out.endswith(s)), '')
  return filesystem.check_output_file(out, what='output', suffix=suffix,
                                      overwrite=overwrite)


def write(weights: types.Weights, out: str, *, epoch: int = 0,
          overwrite: bool = False) -> str:
  """Writes the backbone of `weights` as an official file; returns its path.

  ``torch.save({'epoch': epoch, 'network': state_dict}, out)``, the
  state dict as :func:`state_dict` gives it (as tensors), written
  atomically (a temporary file beside `out`, renamed once complete).

  Args:
    weights: a NIN or AlexNet backbone without heads.
    out: the file (see :func:`check_output`).
    epoch: what the file says it was saved at (the official files' number
      of epochs trained).
    overwrite: replace an existing file.

  Raises:
    InputError: see :func:`check_output` and :func:`state_dict`; PyTorch
      is not installed; or the disk refused the write.
  """
  full = check_output(out, overwrite=overwrite)
  if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or (
      epoch < 0):
    raise InputError(f'epoch={epoch!r}: expected a whole number >= 0')
  state = state_dict(weights)
  torch = _import_torch('writing a PyTorch file')
  network = collections.OrderedDict(
      (key, torch.from_numpy(value)) for key, value in state.items())
  try:
    # torch.save looked up at the call (a test interrupts it halfway).
    filesystem.write_file_atomically(full, lambda tmp: torch.save(
        {'epoch': int(epoch), 'network': network}, tmp))
  except OSError as e:
    raise InputError(f'cannot write {out!r}: {first_line(e)}') from e
  return full


def _read_back_image_size(spec: dict[str, Any]) -> int:
  """The image size :func:`read` gives a file of the backbone `spec`."""
  if spec['name'] != alexnet.AlexNetBackbone.name:
    return IMAGE_SIZE
  side = alexnet.feature_sides(spec['image_size'])['pool5']
  return next(s for s in [ALEXNET_IMAGE_SIZE] + list(
      range(alexnet.MIN_IMAGE_SIZE, spec['image_size'] + 1))
              if alexnet.feature_sides(s)['pool5'] == side)


def unrecorded(weights: types.Weights) -> list[str]:
  """What a file :func:`write` writes cannot say about `weights`.

  The official layout holds the arrays alone; :func:`read` takes the
  image size and the normalisation the official networks were trained
  with. One sentence for each that differs from `weights`' (none for
  weights that came from an official file).
  """
  spec = weights.spec
  notes = []
  read_size = _read_back_image_size(spec)
  if spec['image_size'] != read_size:
    how = ('import it with python -m rotnet_jax.import_torch '
           f"--image_size={spec['image_size']}"
           if spec['name'] == alexnet.AlexNetBackbone.name else
           "a NIN's weights do not depend on it")
    notes.append(f"its images are {spec['image_size']} pixels, which the "
                 f'file does not record: it reads back as a {read_size}-pixel '
                 f"{spec['name']} ({how})")
  if spec['name'] == alexnet.AlexNetBackbone.name:
    mean, std, name = IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, "ImageNet's"
  else:
    mean, std, name = (config_schema.CIFAR_MEAN_RGB,
                       config_schema.CIFAR_STD_RGB, "CIFAR-10's")
  ours = (tuple(map(float, weights.mean_rgb)),
          tuple(map(float, weights.std_rgb)))
  if ours != (tuple(map(float, mean)), tuple(map(float, std))):
    notes.append(
        f'its inputs were normalised with mean_rgb={ours[0]}, '
        f'std_rgb={ours[1]} (0..255 scale), which the file does not '
        f'record: it reads back with {name} {tuple(mean)}, {tuple(std)}')
  return notes
