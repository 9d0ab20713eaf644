"""The paper's numbers, where each was read, and our experiments' names.

The paper: S. Gidaris, P. Singh, N. Komodakis, "Unsupervised Representation
Learning by Predicting Image Rotations", ICLR 2018, arXiv:1803.07728
(https://arxiv.org/abs/1803.07728). :data:`TABLES` holds its tables:
CIFAR-10 (Tables 1-3), ImageNet (4: non-linear classifiers, 5: linear
probes), Places205 (6) and PASCAL VOC (7), each row with the values the
paper prints, the experiment of ours that reproduces it (if any) and the
sources it was read from.

Sources. The machines this project is built on cannot reach the paper's
PDF. Every number here is one that public pages showing the paper's
tables (as images) or quoting them agree on, as the project's issue 17
compared them: py-tonic.github.io's post
"Predicting Image Rotation" (Tables 1-3 as its images 5-7),
hoya012.github.io's self-supervised learning post (the ImageNet linear
probes and PASCAL VOC as its images 11 and 12), kobiso.github.io's
rotation post (PASCAL VOC), the official repository's issues #6 and #10
(Table 1's NIN-4 row; the ImageNet non-linear numbers) and a lecture
transcription. Of these, only the two issues could be read again from
this project's machines (they show Table 1's NIN-4 row and 50 / 43.8 /
59.70); the pages' images could not. The paper's abstract, as pages
indexing arXiv quote it (tldr.takara.ai and researchtrend.ai, page
1803.07728), gives Table 7's detection numbers of the RotNet (54.4 mAP)
and, as "2.4 points lower", of ImageNet labels (56.8). Each
:class:`Table` and :class:`Row` names its own. A number
that no source confirms has no source (:func:`sources` is empty) and the
report and the plots star it: the Places205 row (Table 6), which is the
figure the project's brief quoted from memory. The paper's ImageNet
pretext schedule (``configs/imagenet_rotnet_alexnet.py:paper``) is not
confirmed either.

Table numbers. Tables 1-3 are numbered as in the sources' images; the
numbers of the later tables rest on one second-hand source (4: ImageNet
non-linear, 5: ImageNet linear, 6: Places, 7: PASCAL VOC). Our experiment
names and ``reproduce``'s tables follow them. Earlier versions of this
project called both ImageNet tables ``table4`` and Places ``table5``;
:data:`LEGACY_EXPERIMENTS` maps the experiment names they wrote into
``results.json`` to today's (:func:`canonical`).

Experiment names are ``table/setting/head``; each result row adds the block
(or ``rotation`` / ``classifier`` for pretext and supervised runs, the
task, ``voc_classification`` / ``voc_detection`` / ``voc_segmentation``,
for PASCAL VOC). A row of Table 7 is several runs of ours, one per column
(each task is its own fine-tuning): :attr:`Row.experiments`. Rows of a
table without an experiment (other methods, supervised AlexNets, the
random AlexNets of Tables 4 and 5, the rescaled ones) and the columns of
Table 7 without one (the random AlexNet's detection) are reference
numbers: the report can show them (``report.paper_tables``), nothing of
ours is compared with them.
"""

import dataclasses

# The sources, as the tables cite them.
_PY_TONIC = ('py-tonic.github.io, post "Predicting Image Rotation", '
             'image {} (the paper\'s Table {})')
_HOYA = ('hoya012.github.io, self-supervised learning post, image {} '
         '(the paper\'s {})')
_KOBISO = 'kobiso.github.io, post on rotation prediction (PASCAL VOC table)'
_ABSTRACT = ('the paper\'s abstract (arXiv:1803.07728, as quoted by '
             'tldr.takara.ai and researchtrend.ai): {}')
_ISSUE = 'github.com/gidariss/FeatureLearningRotNet/issues/{} ({})'
_LECTURE = 'a lecture transcription (cited in the project\'s issue 17)'


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a paper table.

  Attributes:
    method: the row's label, as in the paper.
    values: one number per column of its table (%, None: no number).
    experiment: our experiment that reproduces it; None for a reference
      row.
    heads: our head (block) of each column; None: the columns' names.
    experiments: our experiment of each column (None: none of ours), for
      a row whose columns are separate runs of ours (Table 7's tasks);
      None: `experiment` for every column.
    sources: where this row was read, besides its table's sources.
    decimals: the fewest decimals the paper prints in this row; None: its
      table's.
  """
  method: str
  values: tuple[float | None, ...]
  experiment: str | None = None
  heads: tuple[str, ...] | None = None
  experiments: tuple[str | None, ...] | None = None
  sources: tuple[str, ...] = ()
  decimals: int | None = None

  def column_experiments(self, count: int) -> tuple[str | None, ...]:
    """Our experiment of each of `count` columns (None: none of ours)."""
    return self.experiments or (self.experiment,) * count

  @property
  def ours(self) -> tuple[str, ...]:
    """Every experiment of ours in the row, in column order, once each."""
    names = self.experiments or (self.experiment,)
    return tuple(dict.fromkeys(name for name in names if name))


@dataclasses.dataclass(frozen=True)
class Table:
  """One table of the paper.

  Attributes:
    number: the paper's table number.
    title: what it measures.
    columns: its columns' names (our block names where they are blocks).
    rows: its rows, in the paper's order.
    sources: where every row was read; empty: no source confirms it.
    decimals: the fewest decimals the paper prints in its rows (a number
      with more, as PASCAL VOC's 70.87 among 54.4s, shows them all).
  """
  number: int
  title: str
  columns: tuple[str, ...]
  rows: tuple[Row, ...]
  sources: tuple[str, ...]
  decimals: int = 2

  @property
  def name(self) -> str:
    """``table<N>``: the name of its experiments and of its ``reproduce``
    table."""
    return f'table{self.number}'


_BLOCKS5 = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
# The head of each PASCAL VOC column in results.json (mode='transfer':
# config.transfer_task).
_VOC_HEADS = ('voc_classification', 'voc_classification', 'voc_detection',
              'voc_segmentation')

TABLES = (
    Table(1, 'CIFAR-10 accuracy of non-linear classifiers on the frozen '
          'blocks of RotNets of 3, 4 and 5 blocks', _BLOCKS5, (
              Row('RotNet, 3 blocks',
                  (85.45, 88.26, 62.09, None, None),
                  'table1/nin3/multlayer'),
              Row('RotNet, 4 blocks',
                  (85.07, 89.06, 86.21, 61.73, None),
                  'table1/nin4/multlayer',
                  sources=(_ISSUE.format(6, 'this row, quoted'),)),
              Row('RotNet, 5 blocks',
                  (85.04, 89.76, 86.82, 74.50, 50.37),
                  'table1/nin5/multlayer'),
          ), (_PY_TONIC.format(5, 1),)),
    Table(2, 'CIFAR-10 accuracy of a non-linear classifier on block 2 of '
          'RotNets trained on other sets of rotations', ('conv2',), (
              Row('4 rotations (0, 90, 180, 270)', (89.06,),
                  'table2/rot4/multlayer'),
              Row('8 rotations (multiples of 45)', (88.51,),
                  'table2/rot8/multlayer'),
              Row('2 rotations (0, 180)', (87.46,),
                  'table2/rot2_0_180/multlayer'),
              Row('2 rotations (90, 270)', (85.52,),
                  'table2/rot2_90_270/multlayer'),
          ), (_PY_TONIC.format(6, 2),)),
    Table(3, 'CIFAR-10 accuracy: RotNet features against supervised and '
          'other unsupervised ones', ('accuracy',), (
              Row('Supervised NIN', (92.80,), 'table3/supervised_nin3',
                  heads=('classifier',)),
              Row('Random init. + conv', (72.50,), 'table3/random_conv',
                  heads=('conv2',)),
              Row('RotNet + non-linear', (89.06,),
                  'table3/rotnet_multlayer', heads=('conv2',)),
              Row('RotNet + conv', (91.16,), 'table3/rotnet_conv',
                  heads=('conv2',)),
              Row('RotNet + non-linear (fine-tuned)', (91.73,),
                  'table3/rotnet_multlayer_finetune', heads=('conv2',)),
              Row('RotNet + conv (fine-tuned)', (92.17,),
                  'table3/rotnet_conv_finetune', heads=('conv2',)),
              Row('Roto-Scat + SVM', (82.3,), decimals=1),
              Row('ExemplarCNN', (84.3,), decimals=1),
              Row('DCGAN', (82.8,), decimals=1),
              Row('Scattering', (84.7,), decimals=1),
          ), (_PY_TONIC.format(7, 3),)),
    Table(4, 'ImageNet top-1 accuracy of non-linear classifiers on frozen '
          'AlexNet conv4 and conv5 features', ('conv4', 'conv5'), (
              Row('ImageNet labels', (59.7, 59.7),
                  sources=(_ISSUE.format(10, 'supervised 59.70, quoted'),)),
              Row('Random', (27.1, 12.0)),
              Row('RotNet', (50.0, 43.8),
                  'table4/rotnet_alexnet/nonlinear',
                  sources=(_ISSUE.format(
                      10, 'conv4 50 and conv5 43.8, quoted'),)),
          ), (_LECTURE,), decimals=1),
    Table(5, 'ImageNet top-1 accuracy of linear classifiers on frozen '
          'AlexNet features of each block', _BLOCKS5, (
              Row('ImageNet labels', (19.3, 36.3, 44.2, 48.3, 50.5)),
              Row('Random', (11.6, 17.1, 16.9, 16.3, 14.1)),
              Row('Random rescaled', (17.5, 23.0, 24.5, 23.2, 20.6)),
              Row('RotNet', (18.8, 31.7, 38.7, 38.2, 36.5),
                  'table5/rotnet_alexnet/linear'),
          ), (_HOYA.format(11, 'ImageNet linear-probe table'),),
          decimals=1),
    # No source shows this table: the numbers are the project's brief's,
    # quoted from memory, and stay starred until a source confirms them.
    Table(6, 'Places205 top-1 accuracy of linear classifiers on frozen '
          'features of the ImageNet-trained AlexNet', _BLOCKS5, (
              Row('RotNet', (21.5, 31.0, 35.1, 34.6, 33.7),
                  'table6/rotnet_alexnet/places_linear'),
          ), (), decimals=1),
    Table(7, 'PASCAL VOC transfer: classification and detection mAP, '
          'segmentation mIoU (%)', (
              'classification (fc6-8)', 'classification (all)',
              'detection', 'segmentation'), (
                  Row('ImageNet labels', (78.9, 79.9, 56.8, 48.0),
                      sources=(_ABSTRACT.format(
                          'detection 56.8, as RotNet\'s 54.4 + 2.4'),)),
                  # Krähenbühl et al.'s random initialisation; ours is a
                  # random AlexNet (BatchNorm statistics re-estimated).
                  Row('Random', (None, 53.3, 43.4, 19.8),
                      heads=_VOC_HEADS, experiments=(
                          None, 'table7/random_alexnet/classification_all',
                          None, 'table7/random_alexnet/segmentation')),
                  Row('Random rescaled', (39.2, 56.6, 45.6, 32.6)),
                  Row('RotNet', (70.87, 72.97, 54.4, 39.1),
                      heads=_VOC_HEADS, experiments=(
                          'table7/rotnet_alexnet/classification_fc6_8',
                          'table7/rotnet_alexnet/classification_all',
                          'table7/rotnet_alexnet/detection',
                          'table7/rotnet_alexnet/segmentation'),
                      sources=(_ABSTRACT.format('detection 54.4'),)),
              ), (_HOYA.format(12, 'PASCAL VOC table'), _KOBISO),
          decimals=1),
)
TABLES_BY_NAME = {table.name: table for table in TABLES}


def _numbers(tables) -> dict[tuple[str, str], float | None]:
  """(experiment, head) -> number, for the rows that have an experiment
  (None where the paper has no number for a head we run)."""
  numbers = {}
  for table in tables:
    for row in table.rows:
      experiments = row.column_experiments(len(table.columns))
      for experiment, head, value in zip(
          experiments, row.heads or table.columns, row.values):
        if experiment is not None:
          numbers[(experiment, head)] = value
  return numbers


# (experiment, head) -> paper accuracy in %, None where not printed.
CIFAR10 = _numbers(TABLES[:3])
# ImageNet top-1 (%) of the RotNet AlexNet trained on ImageNet: the
# non-linear classifiers on conv4 and conv5 (Table 4) and linear probes on
# every block (Table 5).
IMAGENET = _numbers(TABLES[3:5])
# Places205 top-1 (%) of linear probes on the ImageNet-trained RotNet
# AlexNet (Table 6). Not confirmed by any source (see the module docstring).
PLACES = _numbers(TABLES[5:6])
# PASCAL VOC (Table 7) of the ImageNet-trained AlexNet fine-tuned:
# classification mAP (%) with fc6-8 or every layer trained, detection mAP
# (%, Fast R-CNN), segmentation mIoU (%); ours for the RotNet and (not
# detection) for a random AlexNet.
PASCAL = _numbers(TABLES[6:7])
# Every row of ours with a paper number, all datasets.
PAPER = {**CIFAR10, **IMAGENET, **PLACES, **PASCAL}

# The experiment names earlier versions wrote into results.json (the AlexNet
# tables before they followed the paper's numbering) -> today's names.
LEGACY_EXPERIMENTS = {
    'table4/rotnet_alexnet/linear': 'table5/rotnet_alexnet/linear',
    'table5/rotnet_alexnet/places_linear':
        'table6/rotnet_alexnet/places_linear',
}


def canonical(experiment: str) -> str:
  """Today's name of `experiment` (an old name of :data:`LEGACY_EXPERIMENTS`
  renamed; any other name as it is)."""
  return LEGACY_EXPERIMENTS.get(experiment, experiment)


def _table_and_row(experiment: str) -> tuple[Table, Row] | tuple[None, None]:
  experiment = canonical(experiment)
  for table in TABLES:
    for row in table.rows:
      if experiment in row.ours:
        return table, row
  return None, None


def sources(experiment: str, head: str) -> tuple[str, ...]:
  """Where the paper's number of a row of ours was read; empty when it has
  no number or no source confirms it."""
  if paper_accuracy(experiment, head) is None:
    return ()
  table, row = _table_and_row(experiment)
  return table.sources + row.sources


def confirmed(experiment: str, head: str) -> bool:
  """Whether a source confirms the paper's number of a row (the report and
  the plots star the numbers that are not)."""
  return bool(sources(experiment, head))


def reference_confirmed(table: Table, row: Row) -> bool:
  """Whether a source confirms a row's numbers (any row of `table`)."""
  return bool(table.sources + row.sources)


# Epochs of the head (or of the supervised network) in the paper's protocol:
# a row is compared with the paper only when it ran this schedule.
# (The official non-linear config trains 100 epochs; its rate table ends at
# 50 and the last rate holds.)
_HEAD_EPOCHS = {'multlayer': 100, 'conv': 100, 'supervised': 200}
# The ImageNet and Places classifiers' epochs (num_epochs of
# configs/imagenet_nonlinear_conv4/5.py, imagenet_linear_probes.py and
# places_linear_probes.py, the official configs' schedules).
# PASCAL VOC: num_epochs of configs/voc07_classification_*.py (Krähenbühl
# et al.'s 80,000 iterations), of configs/voc07_detection.py (Fast
# R-CNN's 40,000 iterations: the paper gives none) and of
# configs/voc12_segmentation.py (our schedule: the paper gives none).
_ALEXNET_EPOCHS = {'table4/rotnet_alexnet/nonlinear': 40,
                   'table5/rotnet_alexnet/linear': 35,
                   'table6/rotnet_alexnet/places_linear': 35,
                   'table7/rotnet_alexnet/classification_fc6_8': 256,
                   'table7/rotnet_alexnet/classification_all': 256,
                   'table7/rotnet_alexnet/detection': 16,
                   'table7/rotnet_alexnet/segmentation': 100,
                   'table7/random_alexnet/classification_all': 256,
                   'table7/random_alexnet/segmentation': 100}


def protocol_epochs(experiment: str) -> int | None:
  """Epochs of the protocol behind a row with a paper number, else None."""
  experiment = canonical(experiment)
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
    'table4/rotnet_alexnet/nonlinear':
        'ImageNet: RotNet AlexNet + non-linear',
    'table5/rotnet_alexnet/linear': 'ImageNet: RotNet AlexNet + linear',
    'table6/rotnet_alexnet/places_linear':
        'Places: RotNet AlexNet (ImageNet) + linear',
    # Table 7 by column, the paper's Random row before its RotNet row;
    # the name says the metric (mAP or mIoU, not accuracy).
    'table7/rotnet_alexnet/classification_fc6_8':
        'PASCAL VOC07 classification (mAP): RotNet AlexNet, fc6-8 trained',
    'table7/random_alexnet/classification_all':
        'PASCAL VOC07 classification (mAP): random AlexNet, all trained',
    'table7/rotnet_alexnet/classification_all':
        'PASCAL VOC07 classification (mAP): RotNet AlexNet, all trained',
    'table7/rotnet_alexnet/detection':
        'PASCAL VOC07 detection (mAP): RotNet AlexNet, Fast R-CNN',
    'table7/random_alexnet/segmentation':
        'PASCAL VOC12 segmentation (mIoU): random AlexNet',
    'table7/rotnet_alexnet/segmentation':
        'PASCAL VOC12 segmentation (mIoU): RotNet AlexNet',
    'pretext/nin3': 'Pretext NIN-3 (rotation accuracy)',
    'pretext/nin4': 'Pretext NIN-4 (rotation accuracy)',
    'pretext/nin5': 'Pretext NIN-5 (rotation accuracy)',
    'pretext/rot8': 'Pretext, 8 rotations (rotation accuracy)',
    'pretext/rot2_0_180': 'Pretext, rotations 0/180 (rotation accuracy)',
    'pretext/rot2_90_270': 'Pretext, rotations 90/270 (rotation accuracy)',
    'pretext/random_rotation':
        'Pretext, one random rotation per image (rotation accuracy)',
    'pretext/imagenet_alexnet':
        'Pretext AlexNet, ImageNet (rotation accuracy)',
    'smoke/pretext': 'Smoke: pretext NIN-4, 3 epochs (rotation accuracy)',
    'smoke/rotnet_linear': 'Smoke: RotNet (3 epochs) + linear probe',
    'smoke/random_linear': 'Smoke: random init. + linear probe',
}

# The dataset each paper row was measured on, for rows not on CIFAR-10.
_PAPER_DATASETS = {'table4/rotnet_alexnet/nonlinear': 'imagenet2012',
                   'table5/rotnet_alexnet/linear': 'imagenet2012',
                   'table6/rotnet_alexnet/places_linear': 'Places205',
                   **{experiment: 'voc/2007' for experiment in (
                       'table7/rotnet_alexnet/classification_fc6_8',
                       'table7/rotnet_alexnet/classification_all',
                       'table7/random_alexnet/classification_all')},
                   # Detection reads the devkit's XML (boxes and
                   # difficult flags): a VOCdevkit folder.
                   'table7/rotnet_alexnet/detection': 'VOC2007',
                   # No TFDS dataset has VOC's masks: a VOCdevkit folder.
                   'table7/rotnet_alexnet/segmentation': 'VOC2012',
                   'table7/random_alexnet/segmentation': 'VOC2012'}


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
  TFDS ``places365_small`` is another dataset (365 classes). PASCAL VOC
  classification rows: TFDS ``voc/2007`` and folders (a VOCdevkit);
  detection and segmentation rows: only folders (detection reads the
  devkit's XML; TFDS keeps no masks).
  """
  paper_dataset = _PAPER_DATASETS.get(canonical(experiment))
  if paper_dataset is None:
    return dataset != 'digits'
  return dataset == paper_dataset or _is_folder(dataset)


def paper_accuracy(experiment: str, head: str) -> float | None:
  """The paper's number for a row of ours, or None."""
  return PAPER.get((canonical(experiment), head))


def describe(experiment: str) -> str:
  """A readable name for `experiment` (its ``/k<K>`` suffix kept)."""
  experiment = canonical(experiment)
  base, _, suffix = experiment.rpartition('/k')
  if base in DESCRIPTIONS and suffix.isdigit():
    return f'{DESCRIPTIONS[base]}, K={suffix}'
  return DESCRIPTIONS.get(experiment, experiment)
