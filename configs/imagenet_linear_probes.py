"""Linear probes on frozen RotNet AlexNet features: ImageNet (paper Table 5).

    python main.py --config=configs/imagenet_linear_probes.py \
        --workdir=/data/rotnet/imagenet_linear_probes \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.data_dir=~/tensorflow_datasets

``pretrained`` is the pretext run of ``imagenet_rotnet_alexnet.py``, or the
released official model imported with ``python -m rotnet_jax.import_torch
model_net_epoch50 --workdir=OUT`` (or the file itself). One linear probe
per block conv1..conv5, all fed by one forward pass of the frozen network:
adaptive max-pool to the official sides (``linear_pool_size=0``: 12, 7,
5, 6, 6; about 9,200 features each), BatchNorm without scale or shift,
a linear layer to the 1,000 classes.

The official config (``config/ImageNet_LinearClassifiers_ImageNet_RotNet_
AlexNet_Features.py``): 35 epochs of 192 images, SGD with Nesterov momentum
0.9 and weight decay 5e-4, learning rate 0.01 / 0.002 / 0.0004 / 0.00008
with steps after epochs 5, 15 and 25. ``dataset=imagenet2012`` needs the
ILSVRC 2012 tars in ``<data_dir>/downloads/manual/`` (see
``imagenet_rotnet_alexnet.py``).

Training images are the official classifiers' (``augmentation=
'resize_crop'``): the shorter side resized to 256, a random 224 crop and a
horizontal flip (not the pretext task's random-sized crop); testing, the
central 224 crop of the image resized to 256.

Paper, Table 5 (ImageNet top-1, RotNet AlexNet, linear): conv1 18.8,
conv2 31.7, conv3 38.7, conv4 38.2, conv5 36.5 (its sources:
``rotnet_jax/experiments/paper.py``). ``reproduce table5`` runs it.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('linear')
  config_schema.use_imagenet_input(config)
  config.augmentation = 'resize_crop'  # The official classifiers' crop.
  config.blocks = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
  config.linear_pool_size = 0  # The backbone's own side per block.
  config.num_epochs = 35
  config.learning_rate_table = ((5, 0.01), (15, 0.002), (25, 0.0004),
                                (35, 0.00008))
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  return config
