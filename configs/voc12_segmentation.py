"""PASCAL VOC2012 semantic segmentation, FCN-32s (paper Table 7).

    python main.py --config=configs/voc12_segmentation.py \
        --workdir=/data/rotnet/voc12_segmentation \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.dataset=/data/VOCdevkit

``pretrained`` is the AlexNet RotNet (``imagenet_rotnet_alexnet.py``), an
export of it, or the official ``model_net_epoch50`` file; ``dataset`` a
VOCdevkit folder holding ``VOC2012/`` (``JPEGImages``,
``SegmentationClass``, ``ImageSets/Segmentation/{train,val}.txt``: TFDS
has no VOC segmentation masks). The network is FCN-32s on the AlexNet
(``rotnet_jax/models/transfer.py``): fc6 and fc7 applied as convolutions,
a new zero-initialised 21-way score layer, its scores upsampled
bilinearly to the image; every layer trains (the paper's setting). Each
image is placed on a 500 x 500 canvas (VOC's largest side; label 255
outside the image, not scored), mirrored at random in training; the loss
is each image's mean pixel cross-entropy; tested by mean IoU over val's
whole confusion matrix, 21 classes, label 255 ignored.

The paper does not state its segmentation schedule; Long et al.'s
FCN-AlexNet trains with SGD, momentum 0.9 and weight decay 5e-4. Ours:
batches of 16 images, 100 epochs of train's 1,464 images (9,100
iterations), learning rate 0.001 then 0.0001 for the last 40 epochs.
These are our choices, not the paper's: see the README's protocol notes.

Paper, Table 7 (RotNet AlexNet, segmentation): 39.1 mIoU (its sources:
``rotnet_jax/experiments/paper.py``). ``reproduce pascal`` runs it.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.transfer_defaults('voc_segmentation')
  config.dataset = './VOCdevkit'
  config.train_split = 'train'
  config.test_split = 'val'
  config.transfer_image_size = 500
  config.frozen_up_to = ''
  config.batch_size = 16
  config.num_epochs = 100
  config.learning_rate_steps_table = ()
  config.learning_rate_table = ((60, 0.001), (100, 0.0001))
  config.weight_decay = 5e-4
  config.grad_clip_norm = 0.0
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 5
  return config
