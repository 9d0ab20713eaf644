"""PASCAL VOC2007 classification, every layer fine-tuned (paper Table 7).

    python main.py --config=configs/voc07_classification_all.py \
        --workdir=/data/rotnet/voc07_classification_all \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.data_dir=~/tensorflow_datasets

As ``voc07_classification_fc6_8.py`` (the same protocol, Krähenbühl et
al.'s), with conv1..conv5 trained too (``frozen_up_to=''``).

Paper, Table 7 (RotNet AlexNet, classification all layers): 72.97 mAP
(its sources: ``rotnet_jax/experiments/paper.py``). ``reproduce pascal``
runs it.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.transfer_defaults('voc_classification')
  config.frozen_up_to = ''
  return config
