"""The pretext task's rotations: numpy.rot90, 45 degrees, random, layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rotnet_jax import config_schema
from rotnet_jax.data import DeviceSource
from rotnet_jax.data import arrays
from rotnet_jax.data import rotation
from rotnet_jax.data import transforms
from rotnet_jax.training import objectives


def test_rotations_match_numpy_rot90_and_labels():
  rng = np.random.default_rng(0)
  # Random pixels: no image equals any of its own rotations.
  images = rng.integers(0, 256, (3, 7, 7, 2), dtype=np.uint8)
  rotated, labels = jax.jit(rotation.rotate_all)(images)
  assert rotated.shape == (12, 7, 7, 2) and rotated.dtype == np.uint8
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [0, 1, 2, 3] * 3)
  for i in range(3):
    for k in range(4):
      np.testing.assert_array_equal(rotated[4 * i + k],
                                    np.rot90(images[i], k, axes=(0, 1)))
  # Label 1 is counter-clockwise: the top row becomes the left column.
  np.testing.assert_array_equal(rotated[1][:, 0], images[0][0, ::-1])


def test_two_rotation_sets_label_by_position():
  images = np.random.default_rng(1).normal(size=(2, 6, 6, 1)).astype(
      np.float32)
  rotated, labels = rotation.rotate_all(images, (90, 270))
  np.testing.assert_array_equal(labels, [0, 1, 0, 1])
  np.testing.assert_array_equal(rotated[1], np.rot90(images[0], 3))
  np.testing.assert_array_equal(rotated[2], np.rot90(images[1], 1))


def test_bilinear_rotation_agrees_with_rot90_at_90_degrees():
  images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 9, 3)),
                       jnp.float32)
  np.testing.assert_allclose(rotation._bilinear_rotation(images, 90.0),
                             np.rot90(images, 1, axes=(1, 2)), atol=1e-5)


def test_45_degree_rotation_of_a_known_pattern():
  size = 33
  centre = size // 2
  image = np.zeros((1, size, size, 1), np.float32)
  image[0, centre, centre + 1:centre + 11, 0] = 1.0  # A ray pointing right.
  rotated = np.asarray(rotation.rotate(jnp.asarray(image), 45)[0, ..., 0])
  # Counter-clockwise, the ray now points up and to the right.
  for distance in (3, 6, 9):
    offset = int(round(distance / np.sqrt(2)))
    assert rotated[centre - offset, centre + offset] > 0.5, distance
    assert rotated[centre + offset, centre + offset] < 0.05
  assert rotated[centre, centre + 9] < 0.05  # The old ray is gone.
  assert abs(rotated.sum() - image.sum()) < 0.15 * image.sum()
  # Corners of the rotated square come from outside the image: 0 there.
  ones = rotation.rotate(jnp.ones((1, size, size, 1)), 45)[0, ..., 0]
  assert float(ones[0, 0]) == 0.0 and float(ones[centre, centre]) == 1.0


def test_non_right_angles_need_float_images():
  with pytest.raises(ValueError, match='float images'):
    rotation.rotate(jnp.zeros((1, 4, 4, 3), jnp.uint8), 45)


def test_random_rotation_picks_one_labelled_angle_per_image():
  images = jnp.asarray(np.random.default_rng(3).normal(size=(64, 5, 5, 1)),
                       jnp.float32)
  rotated, labels = rotation.rotate_randomly(images, jax.random.key(0))
  assert rotated.shape == images.shape
  assert set(np.asarray(labels).tolist()) == {0, 1, 2, 3}
  for image, turned, label in zip(images, rotated, labels):
    np.testing.assert_array_equal(turned, np.rot90(image, int(label)))


def test_per_image_values_follow_their_rotations():
  mask = jnp.asarray([1.0, 0.0, 1.0])
  np.testing.assert_array_equal(rotation.repeat_per_rotation(mask, 4),
                                [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1])


def test_rejects_non_square_images():
  with pytest.raises(ValueError, match='square'):
    rotation.rotate_all(jnp.zeros((2, 4, 5, 3), jnp.uint8))


def test_the_four_copies_of_an_image_share_its_augmentation(one_device_mesh):
  # The order of the train step (steps.train_step): the source augments,
  # the step normalises, then the pretext objective rotates. Undoing each
  # copy's rotation gives one augmented image.
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
  data = arrays.SplitArrays(images, np.zeros(64, np.int32), 1)
  source = DeviceSource(data, mesh=one_device_mesh, batch_size=64,
                        train=True, seed=3)

  config = config_schema.defaults()
  objective = objectives.RotationPretext(config)

  @jax.jit
  def train_inputs(resident, inputs):
    batch = source.materialize(resident, inputs)
    batch['image'] = transforms.normalize(
        batch['image'], config.mean_rgb, config.std_rgb, jnp.float32)
    return objective.task(batch, 0, train=True)[0]

  rotated = np.asarray(train_inputs(source.resident, next(source.epoch(0))))
  rotated = rotated.reshape(64, 4, 32, 32, 3)
  for copies in rotated:
    for k in range(1, 4):
      np.testing.assert_array_equal(np.rot90(copies[k], -k, axes=(0, 1)),
                                    copies[0])
  # And augmentation did happen: zero padding (normalised: -mean/std; no
  # pixel of these images is 0) shows in every image whose crop is not the
  # centre one, 80 in 81 on average: 63 of 64 expected, 56 a generous bound.
  padding = -np.asarray(config_schema.CIFAR_MEAN_RGB) / np.asarray(
      config_schema.CIFAR_STD_RGB)
  shows_padding = np.isclose(rotated[:, 0, ..., 0], padding[0],
                             atol=1e-5).any(axis=(1, 2))
  assert shows_padding.sum() >= 56, shows_padding.sum()
