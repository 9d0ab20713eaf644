"""Non-linear classifiers on frozen RotNet features (paper Tables 1 and 2).

    python main.py --config=configs/eval_multlayer.py --workdir=/tmp/eval_nin4 \
        --config.pretrained=/tmp/rotnet_nin4

Trains one MultLayer head (flatten, Linear 200, BN, ReLU, Linear 200, BN,
ReLU, Linear 10) per block of the frozen pretext backbone, all in one run
from one forward pass: Table 1 is one command. 50 epochs, learning rate
0.1 / 0.02 / 0.004 / 0.0008 with steps after epochs 20, 40 and 45.
Paper (RotNet-4): conv1 85.07, conv2 89.06, conv3 86.21, conv4 61.73.

One block only: --config.blocks="('conv2',)" (Table 2; Table 3's
"RotNet + non-linear", 89.06). Another depth: --config.model.num_blocks=3
or 5, matching the pretext run.
"""

from rotnet_jax import config_schema


def get_config():
  return config_schema.evaluation_defaults('multlayer')
