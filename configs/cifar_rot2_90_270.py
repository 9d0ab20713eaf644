"""RotNet pretext with 2 rotations, 90 and 270 degrees (paper Table 2).

    python main.py --config=configs/cifar_rot2_90_270.py --workdir=/tmp/rotnet_rot2_90_270

The NIN-4 recipe of configs/cifar.py, predicting one of the two angles.
Paper: 85.52% with a non-linear classifier on conv2
(configs/eval_multlayer.py --config.blocks="('conv2',)").
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.rotations = (90, 270)
  return config
