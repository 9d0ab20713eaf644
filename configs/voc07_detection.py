"""PASCAL VOC2007 detection, Fast R-CNN on the AlexNet RotNet (Table 7).

First the proposals, once per split (selective search "fast", cached
beside the data; needs ``pip install 'rotnet-jax[detection]'``)::

    rotnet-proposals --dataset=/data/VOCdevkit --split=trainval
    rotnet-proposals --dataset=/data/VOCdevkit --split=test

then::

    python main.py --config=configs/voc07_detection.py \
        --workdir=/data/rotnet/voc07_detection \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.dataset=/data/VOCdevkit

``pretrained`` is the AlexNet RotNet (``imagenet_rotnet_alexnet.py``), an
export of it, or the official ``model_net_epoch50`` file; ``dataset`` a
VOCdevkit folder holding ``VOC2007/`` (boxes and ``difficult`` flags are
read from its XML). Fast R-CNN's own proposals file can be used instead
of rotnet-proposals': ``--config.proposals=/data/selective_search_data/
voc_2007_{split}.mat``.

The detector (``rotnet_jax/models/detection.py``): conv1..conv5, RoI max
pooling to 6x6, the pretrained fc6 and fc7, a new 21-way classifier and
class-specific box regression; every layer trains; BatchNorm keeps its
pretrained statistics. Training (Fast R-CNN, ``data/detection_source.py``):
2 images per step, 64 regions each, at most 25% foreground (IoU >= 0.5;
background in [0.1, 0.5)), random mirrors, one of five scales per step
(480-1,200 pixels on the shorter side); the multi-task loss (softmax +
smooth L1). Testing: one scale (600), every proposal, per class the 100
best regions, NMS at 0.3 (Fast R-CNN's test code also caps each class at
40 detections per image on average over the test set; we do not); VOC07 11-point AP over test, difficult
objects ignored. Detections are written in the devkit's format to
``WORKDIR/detections/``.

The schedule is Fast R-CNN's solver for its small networks: SGD with
momentum 0.9, weight decay 5e-4, learning rate 0.001 for 30,000
iterations then 0.0001 to 40,000. The RotNet paper follows Krähenbühl et
al.'s protocol, whose iteration count it does not state: these are our
choices (see the README's protocol notes). Trainval's 5,011 images make
2,505 steps of 2 per epoch: 16 epochs are 40,080 iterations.

Paper, Table 7 (RotNet AlexNet, detection): 54.4 mAP; ImageNet labels
56.8 (its sources: ``rotnet_jax/experiments/paper.py``).
``reproduce pascal`` runs it.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.transfer_defaults('voc_detection')
  config.dataset = './VOCdevkit'
  config.train_split = 'trainval'
  config.test_split = 'test'
  config.frozen_up_to = ''
  config.batch_size = 2
  config.num_epochs = 16
  config.learning_rate_steps_table = ((30_000, 0.001), (40_080, 0.0001))
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.grad_clip_norm = 0.0
  config.eval_every_epochs = 4
  config.checkpoint_every_epochs = 1
  config.log_every_steps = 100
  return config
