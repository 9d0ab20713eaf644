"""PASCAL VOC2007 classification, fc6-8 fine-tuned (paper Table 7).

    python main.py --config=configs/voc07_classification_fc6_8.py \
        --workdir=/data/rotnet/voc07_classification_fc6_8 \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.data_dir=~/tensorflow_datasets

``pretrained`` is the AlexNet RotNet (``imagenet_rotnet_alexnet.py``), an
export of it, or the official ``model_net_epoch50`` file. Its conv1..conv5
stay frozen (``frozen_up_to='conv5'``); fc6 and fc7 start from the
pretext network and train with a new fc8 of 20 sigmoid outputs drawn from
N(0, 0.01). ``dataset`` is TFDS ``voc/2007`` (trainval to train, test to
test) or a VOCdevkit folder (``--config.dataset=/data/VOCdevkit``).

The protocol of Krähenbühl et al.'s ``voc-classification`` code, which the
paper cites (``config_schema.transfer_defaults``): 80,000 iterations of 16
images (here 256 epochs, 80,128 iterations), base rate 0.001 halved every
10,000, momentum 0.9, weight decay 1e-6, gradients clipped at norm 10;
random crops of side s * 224, s uniform in [0.5, 2] and capped so the
crop fits in the image, resized to 224 and mirrored at random (their Caffe
layer's); the scores of 10 such crops summed at test; an image's
``difficult``-only classes neither positive nor negative. Scored by the
mean over the 20 classes of scikit-learn's average precision (the
11-point VOC07 AP is logged beside it, as ``mAP_11point``).

Paper, Table 7 (RotNet AlexNet, classification fc6-8): 70.87 mAP (its
sources: ``rotnet_jax/experiments/paper.py``). ``reproduce pascal`` runs
it.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.transfer_defaults('voc_classification')
  config.frozen_up_to = 'conv5'
  return config
