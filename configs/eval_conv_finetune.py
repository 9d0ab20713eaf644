"""RotNet conv2 features with the conv head, *fine-tuned* (paper Table 3).

    python main.py --config=configs/eval_conv_finetune.py --workdir=/tmp/eval_conv_finetune \
        --config.pretrained=/tmp/rotnet_nin4

As configs/eval_conv.py, but the pretrained backbone is not frozen: it
trains together with the head (BatchNorm in training mode, same schedule).
Paper: 92.17% (RotNet + conv, fine-tuned).
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('conv_block')
  config.blocks = ('conv2',)
  config.finetune = True
  return config
