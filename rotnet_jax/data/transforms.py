"""Image transforms that run on device, inside the jitted step.

* ``random_crop_flip``: the CIFAR train augmentation, a random 32x32 crop
  of the 4-pixel zero-padded image, then a horizontal flip with probability
  1/2 (the device-resident source; the tf.data pipeline applies the same
  transform on the host).
* ``normalize``: uint8 to ``(x - mean) / std``, for every source.
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


def normalize(images: jax.Array, mean_rgb, std_rgb, dtype) -> jax.Array:
  """uint8 images to ``(x - mean) / std`` (statistics on the 0..255 scale)."""
  mean = jnp.asarray(mean_rgb, jnp.float32)
  std = jnp.asarray(std_rgb, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)
