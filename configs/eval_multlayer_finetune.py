"""RotNet conv2 features with the multlayer head, *fine-tuned* (paper Table 3).

    python main.py --config=configs/eval_multlayer_finetune.py --workdir=/tmp/eval_multlayer_finetune \
        --config.pretrained=/tmp/rotnet_nin4

As configs/eval_multlayer.py, but the pretrained backbone is not frozen: it
trains together with the head (BatchNorm in training mode, same schedule).
Paper: Table 3, RotNet + non-linear, fine-tuned: 91.73.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('multlayer')
  config.blocks = ('conv2',)
  config.finetune = True
  return config
