"""RotNet pretext with one random rotation per image instead of all four.

    python main.py --config=configs/cifar_random_rotation.py --workdir=/tmp/rotnet_random_rotation

The NIN-4 recipe of configs/cifar.py, but each image of a batch appears
once, at one of the four angles drawn at random (128 samples per step
instead of 512). The paper reports that showing all four rotations of an
image in the same batch works better; it gives no number for this variant.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.rotation_mode = 'random'
  return config
