"""RotNet pretext on CIFAR-10 with a 5-block NIN (paper Table 1).

    python main.py --config=configs/cifar_nin5.py --workdir=/tmp/rotnet_nin5

The recipe of configs/cifar.py with model.num_blocks=5. Evaluate every block
with configs/eval_multlayer.py (--config.model.num_blocks=5). The paper's
Table 1 reports the non-linear classifier on each block; its 4-block row
(85.07 / 89.06 / 86.21 / 61.73 on conv1..conv4) is the reference we track.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.model.num_blocks = 5
  return config
