"""Convolutional classifier on a frozen *randomly initialised* NIN-4.

    python main.py --config=configs/eval_conv_random.py --workdir=/tmp/eval_conv_random

The baseline of paper Table 3 ("Random Init. + conv", 72.50%): the recipe
of configs/eval_conv.py on the conv2 features of a NIN-4 that was never
trained (config.pretrained='random', initialised with config.seed).

The random network's shape is the pretext defaults' NIN-4 unless the shape
keys say otherwise: e.g. --config.model.name=alexnet --config.image_size=64
--config.model.width=0.0625 gives a random AlexNet of that shape (its 5
blocks its own).
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('conv_block')
  config.blocks = ('conv2',)
  config.pretrained = 'random'
  return config
