"""Semi-supervised: conv classifier on RotNet features, K labels per class.

    python main.py --config=configs/semi_conv.py --workdir=/tmp/semi_conv_k100 \
        --config.pretrained=/tmp/rotnet_nin4 --config.examples_per_class=100

The head of configs/eval_conv.py trained on the first K images of every
class (K in 20, 100, 400, 1000, 5000), 50,000 samples per epoch. The
RotNet itself was trained without labels on all 50,000 images; the paper
shows it beating the supervised NIN (configs/semi_supervised_nin3.py) for
small K.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('conv_block')
  config.blocks = ('conv2',)
  config.examples_per_class = 100
  config.epoch_examples = 50_000
  return config
