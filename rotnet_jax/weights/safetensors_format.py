"""The exported weights file: one flat safetensors file numpy alone reads.

``python -m rotnet_jax.export`` writes it (``weights.export``). It holds
float32 arrays keyed by their ``/``-joined path in the variable tree the
network is built from:

* ``params/blocks/0/layers/0/conv/kernel``, ``batch_stats/.../norm/mean``:
  the backbone (its classifier included);
* ``heads/params/<block>/...``, ``heads/batch_stats/<block>/...``: the
  classifier heads, when the weights have some (an evaluation run).

Layouts are those of the tree: convolution kernels HWIO, linear kernels
``(in, out)``, features NHWC. The metadata (strings) says what rebuilds and
feeds the network: ``format`` (plain ``rotnet-jax``) and, JSON-encoded,
``version``, ``spec``, ``mean_rgb``/``std_rgb`` (0..255 scale),
``rotations`` (the pretext angles of the backbone's classifier, or
``null``), ``source``, ``config`` (the run's ``config.json``, or ``null``),
``heads`` and ``layout``. It loads with numpy alone::

    import json
    from safetensors import safe_open
    from safetensors.numpy import load_file
    arrays = load_file('nin4.safetensors')   # {'params/...': np.ndarray}
    with safe_open('nin4.safetensors', 'np') as f:
      meta = {k: json.loads(v) for k, v in f.metadata().items()
              if k != 'format'}          # 'format' is plain 'rotnet-jax'

:func:`write` writes it; :func:`read` reads it back into a
``weights.Weights``, checking every key and shape against the network its
spec describes and every value for NaN and infinities; :func:`read_spec`
reads the metadata header alone.
"""

import contextlib
import json
from typing import Any

import numpy as np

from rotnet_jax import models
from rotnet_jax.errors import InputError
from rotnet_jax.errors import first_line
from rotnet_jax.weights import types
from rotnet_jax.workdir import filesystem

FORMAT = 'rotnet-jax'
VERSION = 1
# The metadata keys every exported file has (all JSON-encoded but format).
METADATA_KEYS = ('format', 'version', 'spec', 'mean_rgb', 'std_rgb',
                 'rotations', 'source', 'config', 'heads', 'layout')
LAYOUT = ('float32 arrays keyed by their /-joined path in the variable tree; '
          'convolution kernels HWIO, linear kernels (in, out), features and '
          'images NHWC; inputs are RGB uint8 normalised as (x - mean_rgb) / '
          'std_rgb on the 0..255 scale')
HEADS_PREFIX = 'heads'


def flatten(tree, prefix: str = '') -> dict[str, np.ndarray]:
  """``{'a/b/c': array}`` of a nested dict of arrays (keys joined by ``/``)."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, dict):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """The nested dict of :func:`flatten`'s output (string keys, as a workdir's
  checkpoint has; ``nnx.merge`` takes them)."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _backbone_shapes(path: str, spec: dict[str, Any]
                     ) -> dict[str, tuple[int, ...]]:
  """``{key: shape}`` of every array of the backbone `spec` describes.

  Raises:
    InputError: this package cannot build it (`path` is named).
  """
  try:
    return {key: tuple(x.shape) for key, x in
            flatten(models.abstract_variables(spec)).items()}
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f'{path}: its network {spec} cannot be built here '
                     f'({type(e).__name__}: {first_line(e)}); valid backbones: '
                     f'{list(models.BACKBONES)}') from e


def metadata(weights: types.Weights, *, config=None,
             rotations=None) -> dict[str, str]:
  """The safetensors metadata of `weights` (str -> str, JSON values)."""
  heads = weights.heads
  values = {
      'version': VERSION, 'spec': weights.spec,
      'mean_rgb': list(weights.mean_rgb), 'std_rgb': list(weights.std_rgb),
      'rotations': None if rotations is None else list(rotations),
      'source': weights.origin, 'config': config,
      'heads': None if heads is None else {
          'head_type': heads.head_type, 'blocks': list(heads.blocks),
          'num_classes': heads.num_classes},
      'layout': LAYOUT}
  return dict({k: json.dumps(v, sort_keys=True) for k, v in values.items()},
              format=FORMAT)


def arrays(weights: types.Weights) -> dict[str, np.ndarray]:
  """The flat float32 arrays of `weights` (backbone, then heads)."""
  flat = flatten(weights.variables)
  if weights.heads is not None:
    flat.update(flatten(weights.heads.variables, HEADS_PREFIX))
  return {k: np.ascontiguousarray(np.asarray(v, np.float32))
          for k, v in flat.items()}


def check_output(out: str, *, overwrite: bool) -> str:
  """The absolute path `out` if an exported file may be written there
  (see ``filesystem.check_output_file``)."""
  return filesystem.check_output_file(
      out, what='output', suffix=types.SAFETENSORS_SUFFIX,
      overwrite=overwrite)


def write(weights: types.Weights, out: str, *, overwrite: bool = False,
          config=None, rotations=None) -> str:
  """Writes `weights` to the safetensors file `out`; returns its path.

  Args:
    weights: what to write.
    out: the file (``*.safetensors``).
    overwrite: replace an existing file.
    config: the run's config (``config.json`` content), kept as metadata.
    rotations: the angles of the backbone's classifier, if known.

  Raises:
    InputError: see :func:`check_output`; or the disk refused the write.
  """
  # Imported at the call, as in _open: safetensors is needed only by who
  # writes or reads these files, and save_file is looked up when called
  # (a test interrupts it halfway).
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  full = check_output(out, overwrite=overwrite)
  tensors = arrays(weights)
  meta = metadata(weights, config=config, rotations=rotations)
  try:
    filesystem.write_file_atomically(
        full, lambda tmp: save_file(tensors, tmp, metadata=meta))
  except OSError as e:
    raise InputError(f'cannot write {out!r}: {first_line(e)}') from e
  return full


@contextlib.contextmanager
def _open(path: str):
  """``safe_open(path)``, with a damaged file's error as an InputError.

  safetensors reads local files only: a ``gs://`` file is read from a
  local copy (``filesystem.local_copy``).
  """
  # Imported at the call: only a read of these files needs safetensors.
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with filesystem.local_copy(path) as local:
    try:
      handle = safe_open(local, 'np')
    except Exception as e:  # pylint: disable=broad-except
      raise InputError(
          f'{path} is not a readable safetensors file (cut short, or another '
          f'kind of file?): {first_line(e)}. Re-export it with '
          'python -m rotnet_jax.export') from e
    with handle as f:
      yield f


def read_metadata(path: str) -> dict[str, Any]:
  """The decoded metadata of the exported file `path` (no arrays read).

  Raises:
    InputError: not a safetensors file, or not one this module wrote.
  """
  with _open(path) as f:
    raw = f.metadata() or {}
  if raw.get('format') != FORMAT:
    raise InputError(
        f'{path} is a safetensors file but not a rotnet-jax export (its '
        f"metadata 'format' is {raw.get('format')!r}, expected {FORMAT!r}): "
        'write one with python -m rotnet_jax.export')
  missing = [k for k in METADATA_KEYS if k not in raw]
  if missing:
    raise InputError(f'{path}: the metadata lacks {missing} (expected every '
                     f'one of {list(METADATA_KEYS)}): re-export it')
  decoded = {'format': FORMAT}
  for key in METADATA_KEYS[1:]:
    try:
      decoded[key] = json.loads(raw[key])
    except ValueError as e:
      raise InputError(f"{path}: metadata {key!r} is not valid JSON "
                       f'({first_line(e)}): re-export it') from e
  if decoded['version'] != VERSION:
    raise InputError(f"{path}: format version {decoded['version']!r}; this "
                     f'rotnet-jax reads version {VERSION}')
  return decoded


def read_spec(path: str) -> dict[str, Any]:
  """The backbone spec of the exported file `path`, from its metadata alone.

  The spec is checked to build here (abstractly); no array is read.

  Raises:
    InputError: see :func:`read_metadata`; or the spec names a network
      this package cannot build.
  """
  path = filesystem.absolute(path)
  spec = read_metadata(path)['spec']
  _backbone_shapes(path, spec)
  return spec


def _key_differences(path: str, found: dict[str, tuple],
                     wanted: dict[str, tuple], what: str) -> None:
  missing = sorted(set(wanted) - set(found))
  extra = sorted(set(found) - set(wanted))
  shapes = sorted(k for k in set(found) & set(wanted)
                  if found[k] != wanted[k])
  if not (missing or extra or shapes):
    return
  problems = []
  if missing:
    problems.append(f'missing {missing[:4]}' +
                    (f' (and {len(missing) - 4} more)' if len(missing) > 4
                     else ''))
  if extra:
    problems.append(f'unexpected {extra[:4]}' +
                    (f' (and {len(extra) - 4} more)' if len(extra) > 4
                     else ''))
  for key in shapes[:4]:
    problems.append(f'{key} has shape {found[key]}, expected {wanted[key]}')
  raise InputError(f'{path} does not hold the arrays of {what}: '
                   + '; '.join(problems) + '. Re-export it')


def read(path: str) -> types.Weights:
  """The weights in the exported file `path`.

  Raises:
    InputError: `path` is not a safetensors file (or is cut short), not a
      rotnet-jax export, names an unknown backbone, its arrays are not
      exactly those of the network its spec describes (naming the keys),
      or some hold NaN or infinite values (naming them).
  """
  path = filesystem.absolute(path)
  meta = read_metadata(path)
  spec = meta['spec']
  wanted = _backbone_shapes(path, spec)
  try:
    with _open(path) as f:
      flat = {key: f.get_tensor(key) for key in f.keys()}
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f'{path} is damaged: an array cannot be read '
                     f'({first_line(e)}). Re-export it') from e
  heads_meta = meta['heads']
  head_prefix = HEADS_PREFIX + '/'
  backbone = {k: v for k, v in flat.items() if not k.startswith(head_prefix)}
  head_arrays = {k[len(head_prefix):]: v for k, v in flat.items()
                 if k.startswith(head_prefix)}
  _key_differences(path, {k: tuple(v.shape) for k, v in backbone.items()},
                   wanted, f'the backbone {spec}')
  not_float = sorted(k for k, v in flat.items() if v.dtype != np.float32)
  if not_float:
    raise InputError(f'{path}: arrays {not_float[:4]} are not float32')
  types.check_finite(path, flat)
  heads = None
  if heads_meta is None and head_arrays:
    raise InputError(f'{path}: unexpected head arrays '
                     f'{sorted(head_arrays)[:4]} (its metadata names no '
                     'heads)')
  if heads_meta is not None:
    blocks = tuple(heads_meta['blocks'])
    for collection in ('params', 'batch_stats'):
      found = {k.split('/')[1] for k in head_arrays
               if k.startswith(collection + '/')}
      if collection == 'params' and found != set(blocks):
        raise InputError(
            f'{path}: head arrays for blocks {sorted(found)}, expected '
            f'{sorted(blocks)} (its metadata)')
    other = sorted(k for k in head_arrays
                   if k.split('/')[0] not in ('params', 'batch_stats'))
    if other:
      raise InputError(f'{path}: unexpected arrays {other[:4]}')
    tree = unflatten(head_arrays)
    # A head without BatchNorm has no statistics, hence no keys.
    tree.setdefault('batch_stats', {})
    for block in blocks:
      tree['batch_stats'].setdefault(block, {})
    heads = types.Heads(heads_meta['head_type'], blocks,
                              int(heads_meta['num_classes']), tree)
  origin = {'pretrained': path, 'pretrained_format': types.SAFETENSORS,
            'pretrained_step': None, 'exported_from': meta['source']}
  return types.Weights(
      spec, unflatten(backbone), origin,
      mean_rgb=tuple(float(x) for x in meta['mean_rgb']),
      std_rgb=tuple(float(x) for x in meta['std_rgb']), heads=heads)
