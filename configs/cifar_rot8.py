"""RotNet pretext with 8 rotations, multiples of 45 degrees (paper Table 2).

    python main.py --config=configs/cifar_rot8.py --workdir=/tmp/rotnet_rot8

The NIN-4 recipe of configs/cifar.py, predicting one of 8 angles. The odd
multiples of 45 degrees are bilinear resamplings on device; corners that
come from outside the image are filled with the dataset's mean colour (0
after normalisation). Each image appears at all 8 angles in every batch
(1,024 samples per step). Paper: 88.51% with a non-linear classifier on
conv2 (configs/eval_multlayer.py --config.blocks="('conv2',)").
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.rotations = (0, 45, 90, 135, 180, 225, 270, 315)
  return config
