"""Linear probes on frozen RotNet features (one per block).

    python main.py --config=configs/eval_linear.py --workdir=/tmp/eval_linear \
        --config.pretrained=/tmp/rotnet_nin4

Adaptive max-pool of each block's features to linear_pool_size x
linear_pool_size, BatchNorm without affine parameters, one linear layer: the
paper's ImageNet probe, here on CIFAR with the non-linear head's 50-epoch
schedule. The paper reports no CIFAR-10 number for it; rotnet_jax.reproduce
uses it for the "smoke" check that learned features beat random ones.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('linear')
  config.linear_pool_size = 4
  return config
