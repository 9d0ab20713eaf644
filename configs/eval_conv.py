"""Convolutional classifier on frozen RotNet conv2 features (paper Table 3).

    python main.py --config=configs/eval_conv.py --workdir=/tmp/eval_conv \
        --config.pretrained=/tmp/rotnet_nin4

Trains NIN block 3 (3x3, 1x1, 1x1 conv-BN-ReLU, 192 channels), global
average pooling and a linear layer on the frozen conv2 features of the
pretext NIN-4. 100 epochs, learning rate 0.1 / 0.02 / 0.004 / 0.0008 with
steps after epochs 35, 70 and 85. Paper: 91.16%.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('conv_block')
  config.blocks = ('conv2',)
  return config
