"""CIFAR train augmentation in JAX: random 32x32 crop of the 4-pixel
zero-padded image, then a horizontal flip with probability 1/2.

Used inside the jitted step by the device-resident source; the tf.data
pipeline applies the same transform on the host (``tfdata_source``).
"""

import jax
import jax.numpy as jnp

CROP_PADDING = 4


def random_crop_flip(images: jax.Array, key: jax.Array,
                     padding: int = CROP_PADDING) -> jax.Array:
  """Crops and flips every image of a batch independently.

  Args:
    images: ``[B, H, W, C]`` batch.
    key: PRNG key; the same key gives the same crops and flips whatever the
      sharding of `images` (threefry keys are partitionable).
    padding: zero padding on each side before cropping back to ``H x W``,
      so each offset is uniform in ``[0, 2 * padding]``.

  Returns:
    The augmented batch, same shape and dtype.
  """
  batch, height, width, channels = images.shape
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (batch, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  cropped = jax.vmap(crop)(padded, offsets)
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)
