"""Non-linear classifiers on frozen RotNet features (paper Tables 1 and 2).

    python main.py --config=configs/eval_multlayer.py --workdir=/tmp/eval_nin4 \
        --config.pretrained=/tmp/rotnet_nin4

Trains one MultLayer head (flatten, Linear 200, BN, ReLU, Linear 200, BN,
ReLU, Linear 10) per block of the frozen pretext backbone, all in one run
from one forward pass: Table 1 is one command. 100 epochs as the official
config, learning rate 0.1 / 0.02 / 0.004 / 0.0008 with steps after epochs
20, 40 and 45 (epochs 50-99 stay at 0.0008). The backbone's shape
(blocks, width, image size) is read from the pretrained weights.
Paper (RotNet-4): conv1 85.07, conv2 89.06, conv3 86.21, conv4 61.73.

One block only: --config.blocks="('conv2',)" (Table 2; Table 3's
"RotNet + non-linear", 89.06). A NIN-3 or NIN-5 pretext run needs no other
flag: its depth comes with its checkpoint.
"""

from rotnet_jax import config_schema


def get_config():
  return config_schema.evaluation_defaults('multlayer')
