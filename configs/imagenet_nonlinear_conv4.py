"""Non-linear classifier on frozen RotNet AlexNet conv4 features: ImageNet
(paper Table 4).

    python main.py --config=configs/imagenet_nonlinear_conv4.py \
        --workdir=/data/rotnet/imagenet_nonlinear_conv4 \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.data_dir=~/tensorflow_datasets

Head ``alexnet_nonlinear``: the rest of AlexNet, freshly initialised and
trained on the frozen features: max-pool 3/2, Linear 4096 (no bias), BN,
ReLU, Linear 4096 (no bias), BN, ReLU, Linear to the 1,000 classes.
On conv4 the head starts with one more conv5-like layer (3x3 conv, BN,
ReLU), as the official ``Alexnet_conv4`` classifier; on conv5
(``imagenet_nonlinear_conv5.py``) it does not.

The official config (``config/ImageNet_NonLinearClassifiers_ImageNet_
RotNet_AlexNet_Features.py``, which trains the conv4 and conv5 heads in
one run; ``--config.blocks="('conv4', 'conv5')"`` does the same here):
40 epochs of 192 images, SGD with Nesterov momentum 0.9 and weight decay
5e-4, learning rate 0.01 / 0.002 / 0.0004 / 0.00008 with steps after epochs
10, 20 and 30. ``dataset=imagenet2012`` needs the ILSVRC 2012 tars in
``<data_dir>/downloads/manual/`` (see ``imagenet_rotnet_alexnet.py``).

Training images are the official classifiers' (``augmentation=
'resize_crop'``): the shorter side resized to 256, a random 224 crop and a
horizontal flip (not the pretext task's random-sized crop); testing, the
central 224 crop of the image resized to 256.

Paper, Table 4 (ImageNet top-1, RotNet AlexNet, non-linear classifiers):
conv4 50.0, conv5 43.8 (their sources: ``rotnet_jax/experiments/paper.py``).
``reproduce table4`` runs both.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('alexnet_nonlinear')
  config_schema.use_imagenet_input(config)
  config.augmentation = 'resize_crop'  # The official classifiers' crop.
  config.blocks = ('conv4',)
  config.num_epochs = 40
  config.learning_rate_table = ((10, 0.01), (20, 0.002), (30, 0.0004),
                                (40, 0.00008))
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  return config
