"""Supervised NIN with 3 blocks on CIFAR-10 labels (paper Table 3 baseline).

    python main.py --config=configs/supervised_nin3.py --workdir=/tmp/supervised_nin3

The RotNet recipe (200 epochs, the same learning-rate table, augmentation
and optimiser) with class labels instead of rotations. Paper: 92.80%.
For the semi-supervised curve add --config.examples_per_class=K
--config.epoch_examples=50000 (configs/semi_supervised_nin3.py).
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.mode = 'supervised'
  config.model.num_blocks = 3
  return config
