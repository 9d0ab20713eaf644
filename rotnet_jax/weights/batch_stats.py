"""BatchNorm statistics re-estimated on training images, weights untouched.

A freshly initialised network has running means 0 and variances 1, which
its random convolutions' outputs do not have: frozen and run in inference
mode, its later blocks' features are off by orders of magnitude, and a
head on them measures the scale mismatch more than the features. The
random-init baseline (paper Table 3, "Random Init. + conv") therefore
re-estimates the statistics on training images by default
(``config.random_batch_stats='reestimated'``); the official repository has
no config for this baseline.

Each batch runs the network in training mode (every BatchNorm normalises
by its batch's statistics, as during training); the per-layer batch means
and variances are pooled over the batches (law of total variance). Images
larger than the network's own size (PASCAL VOC segmentation canvases)
are measured on their central crop of that size.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rotnet_jax import models
from rotnet_jax import parallel
from rotnet_jax.data import transforms
from rotnet_jax.errors import InputError
from rotnet_jax.models import layers

# Training images the statistics are estimated on (fewer if the training
# split is smaller).
REESTIMATE_IMAGES = 10_000


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def reestimate(spec, variables, train_source, config, mesh,
               max_images: int = REESTIMATE_IMAGES):
  """`variables` with BatchNorm statistics measured on training batches.

  Args:
    spec: the backbone's spec.
    variables: ``{'params', 'batch_stats'}``, replicated on `mesh`.
    train_source: a training data source (its batches are full).
    config: ``mean_rgb``, ``std_rgb``.
    mesh: the data mesh.
    max_images: stop after the batch that reaches this many images.

  Returns:
    ``(variables with the new batch_stats, images used)``.
  """
  graphdef = models.backbone_graphdef(spec, jnp.float32)
  keep = layers.BATCH_NORM_MOMENTUM

  # Replicated outputs: every process reads the same numbers to the host.
  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_moments(params, resident, inputs):
    batch = train_source.materialize(resident, inputs)
    images = _central_crop(batch['image'], spec['image_size'])
    images = transforms.normalize(images, tuple(config.mean_rgb),
                                  tuple(config.std_rgb), jnp.float32)
    # From zero running averages, one training-mode call leaves
    # (1 - momentum) x the batch's mean and (biased) variance.
    model = nnx.merge(graphdef, params, _zeros_like(variables['batch_stats']))
    model(images, train=True)
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return jax.tree.map(lambda x: x / (1.0 - keep), stats)

  num_batches = min(train_source.steps_per_epoch,
                    max(1, math.ceil(max_images / train_source.batch_size)))
  sums = None
  for index, inputs in enumerate(train_source.epoch(0)):
    if index == num_batches:
      break
    moments = jax.tree.map(np.asarray, batch_moments(
        variables['params'], train_source.resident, inputs))
    # Per layer: sum of batch means, of batch variances, of squared means.
    moments = _with_squared_means(moments)
    sums = moments if sums is None else jax.tree.map(np.add, sums, moments)
  if sums is None:
    raise InputError('re-estimating the random backbone\'s BatchNorm '
                     'statistics: the training split gave no full batch '
                     f'(batch_size={train_source.batch_size}, '
                     f'{train_source.num_examples} examples)')
  pooled = _pool(sums, num_batches)
  new_variables = dict(variables,
                       batch_stats=parallel.replicate(mesh, pooled))
  return new_variables, num_batches * train_source.batch_size


def _central_crop(images: jax.Array, size: int) -> jax.Array:
  """The central `size` square of larger images (e.g. a segmentation
  canvas), so the network runs at its own image size: its fc layers read
  the pool5 map of exactly that size. Images of that size are unchanged.
  """
  height, width = images.shape[1:3]
  if (height, width) == (size, size) or min(height, width) < size:
    return images
  top, left = (height - size) // 2, (width - size) // 2
  return images[:, top:top + size, left:left + size]


def _with_squared_means(tree):
  """Adds ``mean_sq`` beside every ``mean`` of a BatchNorm's statistics."""
  if 'mean' in tree and 'var' in tree:
    return dict(tree, mean_sq=np.square(tree['mean']))
  return {k: _with_squared_means(v) for k, v in tree.items()}


def _pool(sums, count: int):
  """Per layer: mean of the batch means, and the variance of all images."""
  if 'mean_sq' in sums:
    mean = sums['mean'] / count
    var = sums['var'] / count + sums['mean_sq'] / count - np.square(mean)
    return {'mean': mean.astype(np.float32),
            'var': np.maximum(var, 0).astype(np.float32)}
  return {k: _pool(v, count) for k, v in sums.items()}
