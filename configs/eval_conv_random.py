"""Convolutional classifier on a frozen *randomly initialised* NIN-4.

    python main.py --config=configs/eval_conv_random.py --workdir=/tmp/eval_conv_random

The baseline of paper Table 3 ("Random Init. + conv", 72.50%): the recipe
of configs/eval_conv.py on the conv2 features of a NIN-4 that was never
trained (config.pretrained='random', initialised with config.seed).
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('conv_block')
  config.blocks = ('conv2',)
  config.pretrained = 'random'
  return config
