"""The RotNet pretext task: rotate every image of a batch by 0, 90, 180, 270 degrees.

Runs inside the jitted train step, on device, on uint8 batches.

Layout: the copies of one image sit next to each other ("interleaved"):
output row ``4 * i + k`` is image ``i`` rotated by ``k * 90`` degrees
counter-clockwise, and its label is ``k``. Interleaving keeps every image's
copies on the device that holds the image, so a batch sharded over the mesh's
``data`` axis stays sharded the same way after rotation, with no
communication. Augmentation (crop, flip) is applied before rotation, so the
copies of one image share it.
"""

import jax
import jax.numpy as jnp

NUM_ROTATIONS = 4


def rotate_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns the four rotations of every image and their labels.

  Args:
    images: ``[B, H, W, C]`` batch of square images (any dtype).

  Returns:
    ``(rotated, labels)``: ``rotated`` is ``[4B, H, W, C]`` with row
    ``4 * i + k`` equal to ``numpy.rot90(images[i], k)`` (counter-clockwise
    over (H, W)); ``labels`` is ``int32 [4B]`` holding ``k``.
  """
  if images.ndim != 4:
    raise ValueError(f'images must be [B, H, W, C], got shape {images.shape}')
  batch, height, width = images.shape[:3]
  if height != width:
    raise ValueError(
        f'rotation needs square images, got H={height} and W={width}')
  copies = [jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)]
  rotated = jnp.stack(copies, axis=1)  # [B, 4, H, W, C]
  rotated = rotated.reshape((batch * NUM_ROTATIONS,) + images.shape[1:])
  labels = jnp.tile(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), batch)
  return rotated, labels


def repeat_per_rotation(values: jax.Array) -> jax.Array:
  """Repeats a per-image array (mask, class label) to match ``rotate_batch``."""
  return jnp.repeat(values, NUM_ROTATIONS, axis=0)
