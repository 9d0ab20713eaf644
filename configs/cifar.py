"""RotNet pretext on CIFAR-10: NIN with 4 blocks, the official-code recipe.

    python main.py --config=configs/cifar.py --workdir=/tmp/rotnet_nin4

200 epochs of 128 images (512 rotated), SGD with Nesterov momentum 0.9,
weight decay 5e-4, learning rate 0.1 / 0.02 / 0.004 / 0.0008 with steps
after epochs 60, 120 and 160. Random crop (4-pixel padding) and horizontal
flip. Its features feed the paper's CIFAR-10 evaluations: with a non-linear
classifier on conv2, 89.06% (Table 1); with a conv classifier, 91.16%
(Table 3). Table 2's "4 rotations" row is this run too.

Offline, point it at an image folder, e.g. the CIFAR-10 JPEG copy:
    --config.dataset=/data/cifar10-jpeg
"""

from rotnet_jax import config_schema


def get_config():
  return config_schema.defaults()
