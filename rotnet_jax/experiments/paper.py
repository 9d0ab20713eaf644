"""The paper's test accuracies (%), and the names of our experiments.

The paper: S. Gidaris, P. Singh, N. Komodakis, "Unsupervised Representation
Learning by Predicting Image Rotations", ICLR 2018, arXiv:1803.07728
(https://arxiv.org/abs/1803.07728): CIFAR-10 (Tables 1-3, :data:`CIFAR10`),
ImageNet and Places with the AlexNet RotNet (:data:`IMAGENET`,
:data:`PLACES`).

Rows the paper reports but this file does not yet hold (Table 1's 3- and
5-block RotNets, the fine-tuned non-linear head) are listed without a
number: fill them in from the paper's PDF, never from memory or our runs.
No number here has yet been checked against the PDF by this project (the
machines it is built on cannot reach it): they are the figures the
project's brief and issues quote, and :data:`VERIFIED` is empty until
someone checks a row. Reports mark unverified numbers.

The ImageNet and Places numbers are, like the rest, the figures the
project's brief quotes from memory, and less certain still: the brief
calls the ImageNet linear probes Table 4 and Places Table 5 (our table
names follow it), while the recollection of whoever added these rows (no
more checked) puts the non-linear classifiers in Table 4 (conv4 50.0,
conv5 43.8), the linear probes in Table 5 and Places in Table 6. Which
table, and which of conv4/conv5 43.8 belongs to, must be read in the PDF
before anything here is marked verified.

Experiment names are ``table/setting/head``; each result row adds the block
(or ``rotation`` / ``classifier`` for pretext and supervised runs).
"""

# (experiment, head) -> paper accuracy in %, None where not recorded.
CIFAR10 = {
    ('table1/nin3/multlayer', 'conv1'): None,
    ('table1/nin3/multlayer', 'conv2'): None,
    ('table1/nin3/multlayer', 'conv3'): None,
    ('table1/nin4/multlayer', 'conv1'): 85.07,
    ('table1/nin4/multlayer', 'conv2'): 89.06,
    ('table1/nin4/multlayer', 'conv3'): 86.21,
    ('table1/nin4/multlayer', 'conv4'): 61.73,
    ('table1/nin5/multlayer', 'conv1'): None,
    ('table1/nin5/multlayer', 'conv2'): None,
    ('table1/nin5/multlayer', 'conv3'): None,
    ('table1/nin5/multlayer', 'conv4'): None,
    ('table1/nin5/multlayer', 'conv5'): None,
    ('table2/rot4/multlayer', 'conv2'): 89.06,
    ('table2/rot8/multlayer', 'conv2'): 88.51,
    ('table2/rot2_0_180/multlayer', 'conv2'): 87.46,
    ('table2/rot2_90_270/multlayer', 'conv2'): 85.52,
    ('table3/supervised_nin3', 'classifier'): 92.80,
    ('table3/random_conv', 'conv2'): 72.50,
    ('table3/rotnet_multlayer', 'conv2'): 89.06,
    ('table3/rotnet_conv', 'conv2'): 91.16,
    ('table3/rotnet_multlayer_finetune', 'conv2'): None,
    ('table3/rotnet_conv_finetune', 'conv2'): 92.17,
}

# ImageNet top-1 (%) of the RotNet AlexNet trained on ImageNet: linear
# probes on every block, and the non-linear classifiers on conv4 and conv5.
# UNVERIFIED (see the module docstring); conv5 non-linear is not recorded.
IMAGENET = {
    ('table4/rotnet_alexnet/linear', 'conv1'): 18.8,
    ('table4/rotnet_alexnet/linear', 'conv2'): 31.7,
    ('table4/rotnet_alexnet/linear', 'conv3'): 38.7,
    ('table4/rotnet_alexnet/linear', 'conv4'): 38.2,
    ('table4/rotnet_alexnet/linear', 'conv5'): 36.5,
    ('table4/rotnet_alexnet/nonlinear', 'conv4'): 43.8,
    ('table4/rotnet_alexnet/nonlinear', 'conv5'): None,
}

# Places205 top-1 (%) of linear probes on the ImageNet-trained RotNet
# AlexNet. UNVERIFIED (see the module docstring).
PLACES = {
    ('table5/rotnet_alexnet/places_linear', 'conv1'): 21.5,
    ('table5/rotnet_alexnet/places_linear', 'conv2'): 31.0,
    ('table5/rotnet_alexnet/places_linear', 'conv3'): 35.1,
    ('table5/rotnet_alexnet/places_linear', 'conv4'): 34.6,
    ('table5/rotnet_alexnet/places_linear', 'conv5'): 33.7,
}

# Every row with a paper number (or a known gap), all datasets.
PAPER = {**CIFAR10, **IMAGENET, **PLACES}

# (experiment, head) rows whose number someone has checked against the
# paper's PDF. Add a row only after reading it there.
VERIFIED: frozenset[tuple[str, str]] = frozenset()

# Epochs of the head (or of the supervised network) in the paper's protocol:
# a row is compared with the paper only when it ran this schedule.
# (The official non-linear config trains 100 epochs; its rate table ends at
# 50 and the last rate holds.)
_HEAD_EPOCHS = {'multlayer': 100, 'conv': 100, 'supervised': 200}
# The ImageNet and Places classifiers' epochs (num_epochs of
# configs/imagenet_linear_probes.py, places_linear_probes.py and
# imagenet_nonlinear_conv4/5.py, the official configs' schedules).
_ALEXNET_EPOCHS = {'table4/rotnet_alexnet/linear': 35,
                   'table4/rotnet_alexnet/nonlinear': 40,
                   'table5/rotnet_alexnet/places_linear': 35}


def protocol_epochs(experiment: str) -> int | None:
  """Epochs of the protocol behind a row with a paper number, else None."""
  if experiment in _ALEXNET_EPOCHS:
    return _ALEXNET_EPOCHS[experiment]
  if not any(key[0] == experiment for key in CIFAR10):
    return None
  if 'supervised' in experiment:
    return _HEAD_EPOCHS['supervised']
  return _HEAD_EPOCHS['multlayer' if 'multlayer' in experiment else 'conv']


DESCRIPTIONS = {
    'table1/nin3/multlayer': 'RotNet NIN-3 + non-linear',
    'table1/nin4/multlayer': 'RotNet NIN-4 + non-linear',
    'table1/nin5/multlayer': 'RotNet NIN-5 + non-linear',
    'table2/rot4/multlayer': '4 rotations (0/90/180/270)',
    'table2/rot8/multlayer': '8 rotations (multiples of 45)',
    'table2/rot2_0_180/multlayer': '2 rotations (0/180)',
    'table2/rot2_90_270/multlayer': '2 rotations (90/270)',
    'table3/supervised_nin3': 'Supervised NIN-3',
    'table3/random_conv': 'Random init. + conv',
    'table3/rotnet_multlayer': 'RotNet + non-linear',
    'table3/rotnet_conv': 'RotNet + conv',
    'table3/rotnet_multlayer_finetune': 'RotNet + non-linear (fine-tuned)',
    'table3/rotnet_conv_finetune': 'RotNet + conv (fine-tuned)',
    'semi/rotnet_conv': 'Semi-supervised: RotNet + conv',
    'semi/supervised_nin3': 'Semi-supervised: supervised NIN-3',
    'variants/random_rotation/multlayer':
        'One random rotation per image + non-linear',
    'pretext/nin3': 'Pretext NIN-3 (rotation accuracy)',
    'pretext/nin4': 'Pretext NIN-4 (rotation accuracy)',
    'pretext/nin5': 'Pretext NIN-5 (rotation accuracy)',
    'pretext/rot8': 'Pretext, 8 rotations (rotation accuracy)',
    'pretext/rot2_0_180': 'Pretext, rotations 0/180 (rotation accuracy)',
    'pretext/rot2_90_270': 'Pretext, rotations 90/270 (rotation accuracy)',
    'pretext/random_rotation':
        'Pretext, one random rotation per image (rotation accuracy)',
    'smoke/pretext': 'Smoke: pretext NIN-4, 3 epochs (rotation accuracy)',
    'smoke/rotnet_linear': 'Smoke: RotNet (3 epochs) + linear probe',
    'smoke/random_linear': 'Smoke: random init. + linear probe',
    'table4/rotnet_alexnet/linear': 'ImageNet: RotNet AlexNet + linear',
    'table4/rotnet_alexnet/nonlinear':
        'ImageNet: RotNet AlexNet + non-linear',
    'table5/rotnet_alexnet/places_linear':
        'Places: RotNet AlexNet (ImageNet) + linear',
    'pretext/imagenet_alexnet':
        'Pretext AlexNet, ImageNet (rotation accuracy)',
}

# The dataset each paper row was measured on, for rows not on CIFAR-10.
_PAPER_DATASETS = {'table4/rotnet_alexnet/linear': 'imagenet2012',
                   'table4/rotnet_alexnet/nonlinear': 'imagenet2012',
                   'table5/rotnet_alexnet/places_linear': 'Places205'}


def _is_folder(dataset: str) -> bool:
  # The rule of data.datasets.dataset_kind, without touching the disk: a
  # report may be read where the data is not.
  return dataset.startswith(('/', '.', '~'))


def comparable(dataset: str, experiment: str = '') -> bool:
  """Whether a run of `experiment` on `dataset` can be compared with the
  paper's row.

  CIFAR-10 rows: TFDS ``cifar10`` and image folders (presumably a CIFAR-10
  copy) can; the bundled digits cannot. ImageNet rows: TFDS
  ``imagenet2012`` and image folders (presumably ILSVRC 2012). Places rows:
  only image folders (presumably Places205 laid out as the config says);
  TFDS ``places365_small`` is another dataset (365 classes).
  """
  paper_dataset = _PAPER_DATASETS.get(experiment)
  if paper_dataset is None:
    return dataset != 'digits'
  return dataset == paper_dataset or _is_folder(dataset)


def paper_accuracy(experiment: str, head: str) -> float | None:
  """The paper's number for a row, or None."""
  return PAPER.get((experiment, head))


def verified(experiment: str, head: str) -> bool:
  """Whether the paper's number for a row was checked against its PDF."""
  return (experiment, head) in VERIFIED


def describe(experiment: str) -> str:
  """A readable name for `experiment` (its ``/k<K>`` suffix kept)."""
  base, _, suffix = experiment.rpartition('/k')
  if base in DESCRIPTIONS and suffix.isdigit():
    return f'{DESCRIPTIONS[base]}, K={suffix}'
  return DESCRIPTIONS.get(experiment, experiment)
