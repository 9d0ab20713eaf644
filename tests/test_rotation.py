"""The pretext task's rotations against numpy.rot90."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rotnet_jax import rotation
from rotnet_jax.data import arrays
from rotnet_jax.data import DeviceSource


def test_rotations_match_numpy_rot90_and_labels():
  rng = np.random.default_rng(0)
  # Random pixels: no image equals any of its own rotations.
  images = rng.integers(0, 256, (3, 7, 7, 2), dtype=np.uint8)
  rotated, labels = jax.jit(rotation.rotate_batch)(images)
  assert rotated.shape == (12, 7, 7, 2) and rotated.dtype == np.uint8
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [0, 1, 2, 3] * 3)
  for i in range(3):
    for k in range(4):
      np.testing.assert_array_equal(rotated[4 * i + k],
                                    np.rot90(images[i], k, axes=(0, 1)))
  # Label 1 is counter-clockwise: the top row becomes the left column.
  np.testing.assert_array_equal(rotated[1][:, 0], images[0][0, ::-1])


def test_per_image_values_follow_their_rotations():
  mask = jnp.asarray([1.0, 0.0, 1.0])
  np.testing.assert_array_equal(rotation.repeat_per_rotation(mask),
                                [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1])


def test_rejects_non_square_images():
  with pytest.raises(ValueError, match='square'):
    rotation.rotate_batch(jnp.zeros((2, 4, 5, 3), jnp.uint8))


def test_the_four_copies_of_an_image_share_its_augmentation(one_device_mesh):
  # Augment (random crop + flip) as the train step does, then rotate: undoing
  # each copy's rotation must give back one and the same augmented image.
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
  data = arrays.SplitArrays(images, np.zeros(64, np.int32), 1)
  source = DeviceSource(data, mesh=one_device_mesh, batch_size=64,
                        train=True, seed=3)

  @jax.jit
  def augmented_rotations(resident, inputs):
    return rotation.rotate_batch(source.materialize(resident, inputs)['image'])

  rotated, _ = augmented_rotations(source.resident, next(source.epoch(0)))
  rotated = np.asarray(rotated).reshape(64, 4, 32, 32, 3)
  for copies in rotated:
    for k in range(1, 4):
      np.testing.assert_array_equal(np.rot90(copies[k], -k, axes=(0, 1)),
                                    copies[0])
  # And augmentation did happen: some images are shifted or flipped.
  batch = source.materialize(source.resident, next(source.epoch(0)))
  assert (np.asarray(batch['image']) == 0).any()
