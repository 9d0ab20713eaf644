"""The RotNet pretext task: rotate images, predict the rotation.

Runs inside the jitted train step, on device. Label ``k`` means the ``k``-th
angle of the rotation set (default ``(0, 90, 180, 270)`` degrees),
counter-clockwise: for multiples of 90 degrees this is exactly
``numpy.rot90(image, angle // 90)`` over (H, W).

Other angles (the paper's 8 rotations, multiples of 45 degrees) are resampled
bilinearly about the image centre. Corners: output pixels whose source falls
outside the image are 0. Rotation is applied to *normalised* images, so
those corners take the dataset's mean colour rather than black. Beware that
this gives the network a shortcut the paper's 8-rotation experiment shares:
the odd multiples of 45 degrees are the blurred ones with flat corners.

Layout with all rotations: the copies of one image sit next to each other
(row ``n * i + k`` is image ``i`` at angle ``k``), which keeps every
image's copies on the device that holds the image: a batch sharded over the
mesh's ``data`` axis stays sharded the same way, with no communication.
Augmentation (crop, flip) happens before rotation, so the copies of one
image share it.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DEFAULT_ANGLES = (0, 90, 180, 270)


def _check(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f'images must be [B, H, W, C], got shape {images.shape}')
  if images.shape[1] != images.shape[2]:
    raise ValueError(f'rotation needs square images, got H={images.shape[1]} '
                     f'and W={images.shape[2]}')


def _bilinear_rotation(images: jax.Array, degrees: float) -> jax.Array:
  """Rotates float images counter-clockwise by `degrees`, zero outside."""
  size = images.shape[1]
  center = (size - 1) / 2.0
  theta = jnp.deg2rad(degrees)
  rows, cols = jnp.meshgrid(jnp.arange(size) - center,
                            jnp.arange(size) - center, indexing='ij')
  # Output pixel (r, c) reads the source pixel that the rotation maps onto
  # it; at 90 degrees this is rot90's (c, size - 1 - r).
  source = jnp.stack([center + rows * jnp.cos(theta) + cols * jnp.sin(theta),
                      center - rows * jnp.sin(theta) + cols * jnp.cos(theta)])

  def one_channel(channel):
    return jax.scipy.ndimage.map_coordinates(channel, list(source), order=1,
                                             mode='constant', cval=0.0)

  per_image = jax.vmap(one_channel, in_axes=2, out_axes=2)
  return jax.vmap(per_image)(images.astype(jnp.float32)).astype(images.dtype)


def rotate(images: jax.Array, degrees: float) -> jax.Array:
  """Rotates every image of ``[B, H, W, C]`` counter-clockwise by `degrees`.

  Multiples of 90 degrees are exact (``rot90``, any dtype); other angles are
  bilinear and need floating-point images.
  """
  _check(images)
  if degrees % 90 == 0:
    return jnp.rot90(images, int(degrees // 90) % 4, axes=(1, 2))
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'rotating by {degrees} degrees resamples: pass float '
                     f'images, not {images.dtype}')
  return _bilinear_rotation(images, degrees)


def rotate_all(images: jax.Array, angles: Sequence[float] = DEFAULT_ANGLES
               ) -> tuple[jax.Array, jax.Array]:
  """Every image at every angle, with the angle's index as label.

  Args:
    images: ``[B, H, W, C]`` batch of square images.
    angles: rotation set in degrees; label ``k`` is ``angles[k]``.

  Returns:
    ``(rotated, labels)``: ``rotated`` is ``[n B, H, W, C]`` with row
    ``n * i + k`` the image ``i`` rotated by ``angles[k]``; ``labels`` is
    ``int32 [n B]``.
  """
  _check(images)
  copies = jnp.stack([rotate(images, angle) for angle in angles], axis=1)
  rotated = copies.reshape((-1,) + images.shape[1:])
  labels = jnp.tile(jnp.arange(len(angles), dtype=jnp.int32),
                    images.shape[0])
  return rotated, labels


def rotate_randomly(images: jax.Array, key: jax.Array,
                    angles: Sequence[float] = DEFAULT_ANGLES
                    ) -> tuple[jax.Array, jax.Array]:
  """One random angle per image (the "one rotation per image" variant).

  Returns:
    ``(rotated [B, H, W, C], labels int32 [B])``.
  """
  labels = jax.random.randint(key, (images.shape[0],), 0, len(angles),
                              dtype=jnp.int32)
  copies = jnp.stack([rotate(images, angle) for angle in angles], axis=1)
  rotated = jnp.take_along_axis(
      copies, labels[:, None, None, None, None], axis=1)[:, 0]
  return rotated, labels


def repeat_per_rotation(values: jax.Array, count: int) -> jax.Array:
  """Repeats a per-image array (mask, class label) to match ``rotate_all``."""
  return jnp.repeat(values, count, axis=0)
