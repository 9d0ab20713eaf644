"""Linear probes on frozen RotNet AlexNet features: Places (paper Table 6).

    python main.py --config=configs/places_linear_probes.py \
        --workdir=/data/rotnet/places_linear_probes \
        --config.pretrained=/data/rotnet/imagenet_rotnet_alexnet \
        --config.data_dir=~/tensorflow_datasets

The same probes and schedule as ``imagenet_linear_probes.py`` (the official
``config/Places205_LinearClassifiers_ImageNet_RotNet_AlexNet_Features.py``:
features of the ImageNet-trained RotNet, 35 epochs of 192 images, learning
rate 0.01 / 0.002 / 0.0004 / 0.00008 after epochs 5, 15, 25), on scenes.

Dataset: the paper uses Places205 (205 classes, 2.4 M training images),
which is NOT in TensorFlow Datasets. By default this config reads TFDS's
``places365_small`` (Places365-Standard at 256x256, 365 classes, 1.8 M
training images, test on its ``validation`` split): a different dataset,
so its numbers are not the paper's. For Places205 itself, download it from
the MIT Places site and lay it out as an image folder, one folder per
class, using the official ``trainvalsplit_places205/{train,val}_places205
.csv`` lists: ``<root>/train/<class>/*.jpg`` and ``<root>/val/<class>/
*.jpg``, then pass ``--config.dataset=<root> --config.test_split=val``.

Training images are the official probes' (``augmentation='resize_crop'``):
a random 224 crop and a horizontal flip of the image with its shorter side
resized to 256 (Places205's and places365_small's images are 256x256, so
the resize changes nothing there: the official ``RandomCrop(224)``);
testing, the central 224 crop.

Paper, Table 6 (Places205 top-1, RotNet AlexNet trained on ImageNet,
linear): conv1 21.5, conv2 31.0, conv3 35.1, conv4 34.6, conv5 33.7.
UNCONFIRMED: no source the project could read shows this table (see
``rotnet_jax/experiments/paper.py``); the report stars these numbers.
``reproduce table6`` runs it.
"""

from rotnet_jax import config_schema


def get_config():
  config = config_schema.evaluation_defaults('linear')
  config_schema.use_imagenet_input(config, 'places365_small')
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
