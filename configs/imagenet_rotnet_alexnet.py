"""RotNet pretext on ImageNet: AlexNet, the official-code recipe.

    python main.py --config=configs/imagenet_rotnet_alexnet.py \
        --workdir=/data/rotnet/imagenet_rotnet_alexnet \
        --config.data_dir=~/tensorflow_datasets

``dataset=imagenet2012`` is TFDS's ILSVRC 2012, which TFDS cannot download:
put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
``<data_dir>/downloads/manual/`` first (TFDS builds the dataset from them on
the first run). An image folder (``<root>/{train,validation}/<class>/``)
works too: ``--config.dataset=/data/imagenet``.

The official config (``config/ImageNet_RotNet_AlexNet.py``): AlexNet with
BatchNorm, 50 epochs of 192 images (768 rotated images per step), SGD with
Nesterov momentum 0.9 and weight decay 5e-4, learning rate 0.01 / 0.001 /
0.0001 / 0.00001 with steps after epochs 15, 30 and 45; a random-sized
crop resized to 224 and a horizontal flip for training, the central 224
crop of the image resized to 256 for testing; ImageNet's mean and std
(the official 0..1 values times 255). Its features feed
``imagenet_linear_probes.py``, ``places_linear_probes.py``,
``imagenet_nonlinear_conv4.py`` and ``imagenet_nonlinear_conv5.py``.

Variant ``paper`` (``--config=configs/imagenet_rotnet_alexnet.py:paper``):
the shorter schedule the paper's text is recalled to give for ImageNet,
30 epochs at 0.01 / 0.001 / 0.0001 with steps after epochs 10 and 20.
UNCONFIRMED: no source the project could read confirms that schedule
(FeatureLearningRotNet issue #10 has a user, not the authors, say the
paper's numbers come from a 30-epoch model); the official config above is
what the released model was trained with.
"""

from rotnet_jax import config_schema

VARIANTS = ('official', 'paper')


def get_config(variant: str = 'official'):
  """The pretext config; `variant` is ``official`` (default) or ``paper``."""
  if variant not in VARIANTS:
    raise ValueError(f'variant {variant!r}: one of {VARIANTS}')
  config = config_schema.defaults()
  config_schema.use_imagenet_input(config)
  config.image_size = 224
  config.model.name = 'alexnet'
  config.model.num_blocks = 5  # AlexNet's conv1..conv5: fixed.
  config.model.width = 1.0
  config.num_epochs = 50
  config.learning_rate_table = ((15, 0.01), (30, 0.001), (45, 0.0001),
                                (50, 0.00001))
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  # An ImageNet epoch is long: test and save every epoch, and mid-epoch.
  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 1000
  if variant == 'paper':
    config.num_epochs = 30
    config.learning_rate_table = ((10, 0.01), (20, 0.001), (30, 0.0001))
  return config
