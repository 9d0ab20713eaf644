"""Semi-supervised baseline: supervised NIN-3 on K labelled images per class.

    python main.py --config=configs/semi_supervised_nin3.py --workdir=/tmp/semi_sup_k100 \
        --config.examples_per_class=100

The first K training images of every class (dataset order), K in 20, 100,
400, 1000, 5000; every epoch still draws 50,000 samples (repeating the K
per class), as in the paper's semi-supervised experiment. Compare with
configs/semi_conv.py on the same K.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.defaults()
  config.mode = 'supervised'
  config.model.num_blocks = 3
  config.examples_per_class = 100
  config.epoch_examples = 50_000
  return config
