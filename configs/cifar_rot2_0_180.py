"""RotNet pretext with 2 rotations, 0 and 180 degrees (paper Table 2).

    python main.py --config=configs/cifar_rot2_0_180.py --workdir=/tmp/rotnet_rot2_0_180

The NIN-4 recipe of configs/cifar.py, predicting one of the two angles.
Paper: 87.46% with a non-linear classifier on conv2
(configs/eval_multlayer.py --config.blocks="('conv2',)").
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.rotations = (0, 180)
  return config
