"""Runs every job of one of the paper's tables, in order, resumably.

    python -m rotnet_jax.reproduce table3 --root=/tmp/rotnet_repro
    python -m rotnet_jax.reproduce table3 --root=/tmp/quick --quick
    python -m rotnet_jax.reproduce imagenet --root=/data/rotnet \
        --data_dir=~/tensorflow_datasets
    python -m rotnet_jax.reproduce imagenet --root=/tmp/q --quick \
        --dataset=/data/imagenet_small
    python -m rotnet_jax.reproduce pascal --root=/data/rotnet \
        --voc_dataset=/data/VOCdevkit
    python -m rotnet_jax.report /tmp/rotnet_repro

Tables: ``table1`` (non-linear heads on every block of NIN-3/4/5 RotNets),
``table2`` (4, 8, 2 rotations), ``table3`` (supervised, random init,
RotNet + heads, fine-tuned), ``semi`` (K labels per class), ``variants``
(one random rotation per image), and ``smoke``: a 3-epoch RotNet and
linear probes on its conv2 features and on a random NIN's, a few minutes
on a CPU, which shows the features were learned.

ImageNet and Places (AlexNet), numbered as the paper's tables, each with
the RotNet AlexNet pretext run on ImageNet: ``table4`` (the non-linear
classifiers on conv4 and on conv5, ImageNet), ``table5`` (linear probes on
conv1..conv5, ImageNet), ``table6`` (linear probes on conv1..conv5,
Places, on the same ImageNet-trained AlexNet), and ``imagenet``: tables 4
and 5. ``--dataset`` sets the ImageNet data (every job but the Places
probes); ``--places_dataset`` sets the Places probes' (default: the
config's TFDS ``places365_small``, not the paper's Places205; an image
folder of Places205 is comparable with the paper). For an image folder
whose test split is not the config's (``validation``), its own ``val`` or
``test`` folder is used.

PASCAL VOC (the paper's Table 7), on the same ImageNet-trained AlexNet:
``pascal`` (also ``table7``) fine-tunes it on VOC2007 classification with
fc6-8 trained (conv1..conv5 frozen) and with every layer trained, on
VOC2012 segmentation (FCN-32s) and on VOC2007 detection (Fast R-CNN,
``voc07_detection.py``); and a random AlexNet on classification (every
layer) and segmentation, the paper's "Random" row (not detection: the
paper's 43.4 stays a reference number). Before the detection run, two
jobs compute its selective-search proposals of ``trainval`` and ``test``
(``rotnet-proposals --dataset=... --split=...``, cached beside the data:
a job whose file is there already is skipped); ``--proposals`` gives
files instead (``config.proposals``, a path holding ``{split}``) and the
two jobs are left out. ``--voc_dataset`` sets the VOC jobs' dataset, a
VOCdevkit folder holding ``VOC2007/`` and ``VOC2012/`` (default: the
configs' own, TFDS ``voc/2007`` for classification and ``./VOCdevkit``
for segmentation and detection, which only a folder can be: TFDS keeps
no masks, and detection reads the devkit's XML); ``--dataset`` sets the
pretext run's ImageNet data, as for the ImageNet tables.

Old table names. Before they followed the paper, ``table4`` ran both
ImageNet tables (today's ``imagenet``) and ``table5`` the Places probes
(today's ``table6``), in workdirs ``table4/linear`` and
``table5/places_linear``. In a root that holds a run of that numbering
(:func:`old_numbering`), ``table4`` and ``table5`` keep their old meaning
and every job its old workdir and experiment name, so the command that
started a root still resumes it; in any other root they are the paper's.
Either way the runner logs one line saying which it ran (:func:`note`).

Pretext runs are shared between tables: the AlexNet tables in one root
train the AlexNet once.

Each job is an ordinary run of a ``configs/`` file with a few overrides, in
``ROOT/seed<S>/<job>``; the command line of each is logged, so any job can
be rerun by hand. A job whose ``results.json`` says it finished is
skipped; an interrupted one resumes from its checkpoint. ``--epochs_scale``
shortens every schedule (epochs and learning-rate steps) for a quick check;
``--quick`` is a CPU-sized smoke run (scale 0.03, 1/16 width, at most 2,000
training images, the bundled digits unless ``--dataset`` is given). Scaled
runs are not the paper's protocol: the report lists their epochs. The
quick ImageNet and Places tables need ``--dataset=<image folder>`` (the
digits are 32 pixels; AlexNet needs at least 63): they train at 64 pixels
in batches of 16 images, and without ``--places_dataset`` table6's probes
read the same folder (this checks the pipeline, not scene recognition).
The quick ``pascal`` also needs ``--voc_dataset=<VOCdevkit folder>``: its
VOC jobs fine-tune the quick AlexNet in batches of 8 crops of 64 pixels
(classification, 2 test crops per image), 4 canvases of 80 pixels
(segmentation) or 2 images of 64 or 80 pixels (detection, tested at 64
on their first 200 proposals), every image of the splits (VOC has no
training subset); the classification's and detection's step tables are
scaled as their epochs are (see :func:`scale_schedule`).
"""

import dataclasses
import importlib.util
import math
import os
import shlex
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

from rotnet_jax import config_schema
from rotnet_jax.data import datasets
from rotnet_jax.data import proposals as proposals_lib
from rotnet_jax.data import voc
from rotnet_jax.errors import InputError
from rotnet_jax.errors import MissingInputError
from rotnet_jax.training import train
from rotnet_jax.training import validation
from rotnet_jax.workdir import filesystem
from rotnet_jax.workdir import run_files

DEFAULT_KS = (20, 100, 400, 1000, 5000)


# configs/ of the checkout: rotnet_jax/experiments/ -> the repository root.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs')
QUICK_SCALE = 0.03
# Small batches: more steps for the same CPU time.
QUICK_OVERRIDES = {'model.width': 1 / 16, 'num_train_examples': 2000,
                   'batch_size': 32}
QUICK_DATASET = 'digits'
# Tables of the AlexNet on ImageNet-sized images.
ALEXNET_TABLES = ('table4', 'table5', 'table6', 'imagenet', 'pascal')
# Other names of tables: the paper's number of the PASCAL VOC table.
ALIASES = {'table7': 'pascal'}
# The AlexNet table names of the old numbering -> the tables they ran, in
# a root of that numbering (see the module docstring).
OLD_TABLES = {'table4': 'imagenet', 'table5': 'table6'}
# --quick for them: AlexNet's smallest input is 63 pixels (64 keeps conv5
# at 3x3, which the non-linear heads' 3x3 max-pool needs), and batches of
# 16 images (64 rotated) fit small test folders.
QUICK_ALEXNET_OVERRIDES = {'image_size': 64, 'batch_size': 16}
# --quick for the PASCAL VOC jobs, per config.transfer_task (over the
# table's quick overrides): small crops and canvases of the 64-pixel
# AlexNet, 2 test crops, batches that a small VOCdevkit fills (a test
# devkit has 20 trainval images, 6 segmentation train images).
QUICK_VOC_OVERRIDES = {
    'voc_classification': {'batch_size': 8, 'transfer_image_size': 64,
                           'test_crops': 2},
    'voc_segmentation': {'batch_size': 4, 'transfer_image_size': 80},
    'voc_detection': {'batch_size': 2, 'train_scales': (64, 80),
                      'test_scale': 64, 'max_size': 128,
                      'max_proposals': 200, 'rois_per_image': 16},
}
# Overrides of every job that VOC jobs leave out: --dataset is the
# pretext's ImageNet data, and VOC has no training subset.
_NOT_VOC_KEYS = ('dataset', 'num_train_examples')
# The command that computes a detection split's proposals (its flags:
# rotnet_jax/commands/proposals.py).
PROPOSALS_COMMAND = 'rotnet-proposals'
# Test-split folders an image folder may have instead of the config's.
FOLDER_TEST_SPLITS = ('validation', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class Job:
  """One run: a config file, overrides, and where its backbone comes from.

  Attributes:
    name: workdir under ``ROOT/seed<S>/``.
    config_file: file in ``configs/``.
    experiment: row name in the report (``config.experiment``).
    overrides: extra ``(key, value)`` config settings.
    pretrained: name of the pretext job whose workdir is the backbone.
    scalable: whether ``--epochs_scale``/``--quick`` shorten it (not the
      smoke jobs, which have their own short schedule).
    places: trains on Places: ``--places_dataset``, not ``--dataset``,
      sets its dataset.
    voc: fine-tunes on PASCAL VOC (``mode='transfer'``):
      ``--voc_dataset``, not ``--dataset``, sets its dataset.
    old: ``(name, experiment)`` of the job in a root of the old table
      numbering (see the module docstring), if they differed.
    proposals_split: not a training run: the job computes the region
      proposals of this VOC2007 split (``rotnet-proposals``) at their
      default path, for the detection job of `config_file` and
      `pretrained` (whose dataset it reads); once per dataset, whatever
      the seeds.
  """
  name: str
  config_file: str
  experiment: str
  overrides: tuple[tuple[str, Any], ...] = ()
  pretrained: str | None = None
  scalable: bool = True
  places: bool = False
  voc: bool = False
  old: tuple[str, str] | None = None
  proposals_split: str | None = None


def _pretext(name: str, config_file: str, *overrides) -> Job:
  return Job(f'pretext/{name}', config_file, f'pretext/{name}',
             tuple(overrides))


PRETEXT = {
    'nin3': _pretext('nin3', 'cifar_nin3.py'),
    'nin4': _pretext('nin4', 'cifar.py'),
    'nin5': _pretext('nin5', 'cifar_nin5.py'),
    'rot8': _pretext('rot8', 'cifar_rot8.py'),
    'rot2_0_180': _pretext('rot2_0_180', 'cifar_rot2_0_180.py'),
    'rot2_90_270': _pretext('rot2_90_270', 'cifar_rot2_90_270.py'),
    'random_rotation': _pretext('random_rotation',
                                'cifar_random_rotation.py'),
    'imagenet_alexnet': _pretext('imagenet_alexnet',
                                 'imagenet_rotnet_alexnet.py'),
}
_CONV2 = (('blocks', ('conv2',)),)


def _table1():
  jobs = []
  for blocks in (3, 4, 5):
    name = f'nin{blocks}'
    jobs += [PRETEXT[name], Job(
        f'table1/{name}_multlayer', 'eval_multlayer.py',
        f'table1/{name}/multlayer', (('model.num_blocks', blocks),),
        pretrained=PRETEXT[name].name)]
  return jobs


def _table2():
  jobs = []
  for name, pretext in (('rot4', 'nin4'), ('rot8', 'rot8'),
                        ('rot2_0_180', 'rot2_0_180'),
                        ('rot2_90_270', 'rot2_90_270')):
    jobs += [PRETEXT[pretext], Job(
        f'table2/{name}_multlayer', 'eval_multlayer.py',
        f'table2/{name}/multlayer', _CONV2, pretrained=PRETEXT[pretext].name)]
  return jobs


def _table3():
  nin4 = PRETEXT['nin4'].name
  return [
      Job('table3/supervised_nin3', 'supervised_nin3.py',
          'table3/supervised_nin3'),
      PRETEXT['nin4'],
      Job('table3/random_conv', 'eval_conv_random.py', 'table3/random_conv'),
      Job('table3/rotnet_multlayer', 'eval_multlayer.py',
          'table3/rotnet_multlayer', _CONV2, pretrained=nin4),
      Job('table3/rotnet_conv', 'eval_conv.py', 'table3/rotnet_conv',
          pretrained=nin4),
      Job('table3/rotnet_multlayer_finetune', 'eval_multlayer_finetune.py',
          'table3/rotnet_multlayer_finetune', pretrained=nin4),
      Job('table3/rotnet_conv_finetune', 'eval_conv_finetune.py',
          'table3/rotnet_conv_finetune', pretrained=nin4),
  ]


def _semi(ks):
  jobs = [PRETEXT['nin4']]
  for k in ks:
    jobs += [
        Job(f'semi/rotnet_conv_k{k}', 'semi_conv.py',
            f'semi/rotnet_conv/k{k}', (('examples_per_class', k),),
            pretrained=PRETEXT['nin4'].name),
        Job(f'semi/supervised_nin3_k{k}', 'semi_supervised_nin3.py',
            f'semi/supervised_nin3/k{k}', (('examples_per_class', k),)),
    ]
  return jobs


def _variants():
  return [PRETEXT['random_rotation'], Job(
      'variants/random_rotation_multlayer', 'eval_multlayer.py',
      'variants/random_rotation/multlayer', _CONV2,
      pretrained=PRETEXT['random_rotation'].name)]


def _smoke():
  # Own short schedule, small model and the bundled digits (--dataset and
  # --width still apply): learned features must show within minutes.
  short = (('num_epochs', 3), ('learning_rate_table', ((2, 0.1), (3, 0.02))),
           ('eval_every_epochs', 1), ('log_every_steps', 10),
           ('batch_size', 64), ('model.width', 1 / 16), ('dataset', 'digits'))
  pretext = Job('smoke/pretext', 'cifar.py', 'smoke/pretext', short,
                scalable=False)
  probe = short + (('blocks', ('conv2',)),)
  return [
      pretext,
      Job('smoke/rotnet_linear', 'eval_linear.py', 'smoke/rotnet_linear',
          probe, pretrained=pretext.name, scalable=False),
      Job('smoke/random_linear', 'eval_linear.py', 'smoke/random_linear',
          probe + (('pretrained', 'random'),), scalable=False),
  ]


def _table4():
  # One results row per block: the non-linear heads' (conv4, conv5) in two
  # runs under one experiment name (the same in the old numbering).
  pretext = PRETEXT['imagenet_alexnet']
  return [
      pretext,
      Job('table4/nonlinear_conv4', 'imagenet_nonlinear_conv4.py',
          'table4/rotnet_alexnet/nonlinear', pretrained=pretext.name),
      Job('table4/nonlinear_conv5', 'imagenet_nonlinear_conv5.py',
          'table4/rotnet_alexnet/nonlinear', pretrained=pretext.name),
  ]


def _table5():
  # The probes of every block (conv1..conv5) in one run.
  pretext = PRETEXT['imagenet_alexnet']
  return [pretext, Job(
      'table5/linear', 'imagenet_linear_probes.py',
      'table5/rotnet_alexnet/linear', pretrained=pretext.name,
      old=('table4/linear', 'table4/rotnet_alexnet/linear'))]


def _table6():
  pretext = PRETEXT['imagenet_alexnet']
  return [pretext, Job(
      'table6/places_linear', 'places_linear_probes.py',
      'table6/rotnet_alexnet/places_linear', pretrained=pretext.name,
      places=True,
      old=('table5/places_linear', 'table5/rotnet_alexnet/places_linear'))]


def _imagenet():
  return _table4() + _table5()[1:]  # One pretext run.


# The detection config and the splits it trains and tests on (its
# train_split and test_split), whose proposals are computed before it.
DETECTION_CONFIG = 'voc07_detection.py'
DETECTION_RUN_SPLITS = ('trainval', 'test')


def _proposals(split: str, pretext: Job) -> Job:
  # The detection job's config file and backbone: its config is the one
  # whose proposals it computes (and a valid one).
  name = f'proposals/voc07_{split}'
  return Job(name, DETECTION_CONFIG, name, pretrained=pretext.name,
             voc=True, scalable=False, proposals_split=split)


def _pascal():
  # One job per task and setting (each a row and column of the paper's
  # Table 7); the random AlexNet (its BatchNorm statistics re-estimated on
  # VOC images) where the paper has a "Random" number, but detection's
  # (re-estimating a random backbone's statistics on detection batches is
  # untested). Detection's proposals come just before it.
  pretext = PRETEXT['imagenet_alexnet']
  random = (('pretrained', 'random'), ('model.name', 'alexnet'))
  return [
      pretext,
      Job('table7/voc07_classification_fc6_8',
          'voc07_classification_fc6_8.py',
          'table7/rotnet_alexnet/classification_fc6_8',
          pretrained=pretext.name, voc=True),
      Job('table7/voc07_classification_all', 'voc07_classification_all.py',
          'table7/rotnet_alexnet/classification_all',
          pretrained=pretext.name, voc=True),
      Job('table7/voc12_segmentation', 'voc12_segmentation.py',
          'table7/rotnet_alexnet/segmentation', pretrained=pretext.name,
          voc=True),
      *[_proposals(split, pretext) for split in DETECTION_RUN_SPLITS],
      Job('table7/voc07_detection', DETECTION_CONFIG,
          'table7/rotnet_alexnet/detection', pretrained=pretext.name,
          voc=True),
      Job('table7/random_voc07_classification_all',
          'voc07_classification_all.py',
          'table7/random_alexnet/classification_all', random, voc=True),
      Job('table7/random_voc12_segmentation', 'voc12_segmentation.py',
          'table7/random_alexnet/segmentation', random, voc=True),
  ]


_TABLE_BUILDERS = {'table1': _table1, 'table2': _table2, 'table3': _table3,
                   'table4': _table4, 'table5': _table5, 'table6': _table6,
                   'imagenet': _imagenet, 'pascal': _pascal, 'semi': _semi,
                   'variants': _variants, 'smoke': _smoke}
TABLES = tuple(_TABLE_BUILDERS)
# Every name a table can be given (TABLES and their ALIASES).
TABLE_NAMES = TABLES + tuple(ALIASES)
# What each AlexNet table runs, for the notes (see note()).
_MEANINGS = {
    'table4': 'the paper\'s Table 4 (ImageNet, non-linear classifiers on '
              'conv4 and conv5)',
    'table5': 'the paper\'s Table 5 (ImageNet, linear probes)',
    'table6': 'the paper\'s Table 6 (Places, linear probes)',
    'imagenet': 'both ImageNet tables',
}
_NUMBERING = ('the AlexNet tables are numbered as the paper\'s: table4 = '
              'ImageNet non-linear, table5 = ImageNet linear, table6 = '
              'Places linear, imagenet = table4 + table5')


def old_numbering(root: str) -> bool:
  """Whether `root` holds a job of the old AlexNet table numbering (a
  workdir of a job's ``old`` name, in any ``seed*`` folder)."""
  folder = filesystem.resolve(root)
  if not folder.is_dir():
    return False
  old_names = [job.old[0] for build in (_table5, _table6)
               for job in build() if job.old]
  return any(
      seed.is_dir() and any((seed / name).exists() for name in old_names)
      for seed in folder.iterdir() if seed.name.startswith('seed'))


def _in_old_numbering(job: Job) -> Job:
  if not job.old:
    return job
  name, experiment = job.old
  return dataclasses.replace(job, name=name, experiment=experiment)


def table_jobs(table: str, ks=DEFAULT_KS, *,
               root: str | None = None) -> list[Job]:
  """The jobs of `table`, pretext runs first (`ks`: the semi table's K).

  Args:
    table: one of :data:`TABLE_NAMES` (an alias is its table).
    ks: the semi table's K.
    root: the root the jobs will run in: in a root of the old AlexNet
      table numbering (:func:`old_numbering`), ``table4`` and ``table5``
      are their old tables and every job has its old workdir and
      experiment name. None: the paper's numbering.
  """
  table = ALIASES.get(table, table)
  if table not in _TABLE_BUILDERS:
    raise InputError(f'unknown table {table!r}; valid: {TABLE_NAMES}')
  old = root is not None and old_numbering(root)
  if old:
    table = OLD_TABLES.get(table, table)
  jobs = _semi(ks) if table == 'semi' else _TABLE_BUILDERS[table]()
  return [_in_old_numbering(job) for job in jobs] if old else jobs


def note(table: str, root: str | None = None) -> str | None:
  """One line on what an old AlexNet table name runs in `root` (see
  :func:`table_jobs`), naming the new table names; None for other tables.
  """
  if table not in OLD_TABLES:
    return None
  now = OLD_TABLES[table]
  if root is not None and old_numbering(root):
    return (f'{table}: {root} holds runs of the old numbering, so {table} '
            f'runs what it ran there before, {_MEANINGS[now]} (today\'s '
            f'{now}), in its old workdirs; {_NUMBERING}.')
  return (f'{table} is {_MEANINGS[table]}; before, it ran '
          f'{_MEANINGS[now]} (today\'s {now}): {_NUMBERING}.')


def load_config_file(config_file: str, configs_dir: str = CONFIGS_DIR):
  """``get_config()`` of a file in ``configs/``."""
  path = os.path.join(configs_dir, config_file)
  if not os.path.exists(path):
    raise InputError(f'config file {path} not found: run from a checkout '
                     'of rotnet-jax (configs/ is not installed).')
  spec = importlib.util.spec_from_file_location(
      f'rotnet_configs.{config_file[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _round(x: float) -> int:
  return int(math.floor(x + 0.5))


def _scaled_table(table, scale: float) -> tuple[tuple[int, float], ...]:
  """``((end, lr), ...)`` with every end scaled, each entry keeping at
  least one unit (epoch or step) after the previous one's end."""
  scaled, end = [], 0
  for old_end, lr in table:
    end = max(end + 1, _round(old_end * scale))
    scaled.append((end, lr))
  return tuple(scaled)


def scale_schedule(config, scale: float) -> None:
  """Shortens (or lengthens) every epoch count of `config` by `scale`.

  Every learning rate of the table keeps at least one epoch, so a short
  schedule still steps down through all of them. The epoch *length*
  (``epoch_examples``) is not scaled: only the number of epochs is. A
  schedule in iterations (``learning_rate_steps_table``, PASCAL VOC
  classification's) is scaled instead of the epoch table it replaces
  (which stays as it is, unused), each rate keeping at least one step:
  scaled with the epochs, its steps and the run's keep their ratio on the
  protocol's data.
  """
  if scale == 1.0:
    return
  epochs = _round(config.num_epochs * scale)
  if config.learning_rate_steps_table:
    config.learning_rate_steps_table = _scaled_table(
        config.learning_rate_steps_table, scale)
    config.num_epochs = max(1, epochs)
  else:
    config.learning_rate_table = _scaled_table(config.learning_rate_table,
                                               scale)
    config.num_epochs = max(config.learning_rate_table[-1][0], epochs)
  for key in ('eval_every_epochs', 'checkpoint_every_epochs'):
    config[key] = max(1, _round(config[key] * scale))


def job_config(job: Job, *, root: str, seed: int, scale: float = 1.0,
               overrides: dict[str, Any] | None = None,
               places_dataset: str | None = None,
               voc_dataset: str | None = None,
               proposals: str | None = None, quick: bool = False):
  """The config of `job` for `seed` under `root`, with user overrides.

  Args:
    job: the job.
    root: the table's root folder.
    seed: ``config.seed``.
    scale: multiplies the epochs of a scalable job.
    overrides: config settings for every job; a ``dataset`` one does not
      apply to Places jobs (``job.places``) nor to PASCAL VOC jobs
      (``job.voc``), which also leave out ``num_train_examples``.
    places_dataset: the dataset of Places jobs (None: the config's).
    voc_dataset: the dataset of PASCAL VOC jobs (None: the config's).
    proposals: ``config.proposals`` of a detection job (None: the
      config's, the files the proposals jobs compute).
    quick: ``--quick``: a VOC job also gets its task's
      :data:`QUICK_VOC_OVERRIDES` (the table's quick overrides come in
      `overrides`).
  """
  config = load_config_file(job.config_file)
  config.update_from_flattened_dict(dict(job.overrides))
  overrides = dict(overrides or {})
  if job.places:
    overrides.pop('dataset', None)  # That is the ImageNet data.
    if places_dataset:
      overrides['dataset'] = places_dataset
  if job.voc:
    for key in _NOT_VOC_KEYS:
      overrides.pop(key, None)
    if quick:
      overrides.update(QUICK_VOC_OVERRIDES[config.transfer_task])
    if voc_dataset:
      overrides['dataset'] = voc_dataset
    if proposals and config.transfer_task == 'voc_detection':
      overrides['proposals'] = proposals
  for key, value in overrides.items():
    if key == 'num_train_examples' and config.examples_per_class:
      continue  # A K-per-class run already picks its subset.
    config.update_from_flattened_dict({key: value})
  if job.scalable:
    scale_schedule(config, scale)
  config.seed = seed
  config.experiment = job.experiment
  if job.pretrained:
    config.pretrained = filesystem.join(root, f'seed{seed}', job.pretrained)
  _use_folder_test_split(config)
  return config


def _use_folder_test_split(config) -> None:
  """Points ``test_split`` of an image-folder dataset at the folder's own
  test split when the config's is missing there.

  The ImageNet configs test on TFDS's ``validation``; ImageNet-style
  folders often name it ``val`` (Places205's lists, too). Only one of
  :data:`FOLDER_TEST_SPLITS` present is used; otherwise the config stays
  as it is and opening the data says what is missing.
  """
  if datasets.dataset_kind(config.dataset) != 'folder':
    return
  root = os.path.expanduser(config.dataset)
  if not os.path.isdir(root) or os.path.isdir(
      os.path.join(root, config.test_split)):
    return
  present = [s for s in FOLDER_TEST_SPLITS
             if s != config.train_split and os.path.isdir(os.path.join(
                 root, s))]
  if len(present) == 1:
    logging.info('%s has no %s folder: testing on %s.', root,
                 config.test_split, present[0])
    config.test_split = present[0]


def quick_overrides(table: str, dataset: str | None) -> dict[str, Any]:
  """The config overrides of ``--quick`` for `table` and ``--dataset``
  (every job's; a VOC job's own come from :func:`job_config`).

  Raises:
    InputError: an AlexNet table (ImageNet, Places, PASCAL VOC) without an
      image folder.
  """
  overrides = dict(QUICK_OVERRIDES)
  if ALIASES.get(table, table) in ALEXNET_TABLES:
    if not dataset or dataset == QUICK_DATASET:
      raise InputError(
          f'{table} --quick needs --dataset=<image folder>, ImageNet-style '
          '(<root>/train/<class>/*.JPEG and <root>/val/<class>/...): the '
          'bundled digits are 32 pixels, too small for AlexNet (at least '
          '63). Any small folder of photos works, e.g. a few classes of '
          'ILSVRC 2012.')
    overrides.update(QUICK_ALEXNET_OVERRIDES)
  overrides['dataset'] = dataset or QUICK_DATASET
  return overrides


def command_line(job: Job, config, workdir: str) -> str:
  """The ``main.py`` command that runs the same job by hand."""
  reference = load_config_file(job.config_file)
  args = ['python', 'main.py', f'--config=configs/{job.config_file}',
          f'--workdir={workdir}']
  flat_config = run_files.resolved_config(config)
  flat_reference = run_files.resolved_config(reference)

  def walk(node, ref, prefix=''):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, ref.get(key, {}), f'{prefix}{key}.')
      elif ref.get(key) != value:
        if isinstance(value, list):
          value = tuple(tuple(v) if isinstance(v, list) else v
                        for v in value)
        args.append(f'--config.{prefix}{key}={value}')

  walk(flat_config, flat_reference)
  return ' '.join(shlex.quote(a) for a in args)


# Settings that do not change what a job computes.
_BOOKKEEPING_KEYS = ('log_every_steps', 'eval_every_epochs',
                     'checkpoint_every_epochs', 'keep_checkpoints',
                     'data_dir', 'cache_dir', 'shuffle_buffer_size')


def _job_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in config_dict.items() if k not in _BOOKKEEPING_KEYS}


def finished(workdir: str, config) -> bool:
  """Whether `workdir` already holds this job's complete results.

  Raises:
    InputError: `workdir` holds a run of other settings (another dataset,
      width, schedule...): its results would be reported as this job's.
  """
  saved = run_files.read_config(workdir)
  if saved is None:
    return False
  saved = _job_settings(saved)
  wanted = _job_settings(run_files.resolved_config(config))
  saved.pop('network', None)
  # A key a newer version added is not in an older run's config: at its
  # default it asks for what that run did (the code it configures did not
  # exist, or behaved as the default).
  defaults = run_files.resolved_config(config_schema.defaults())
  differ = sorted(k for k in set(saved) | set(wanted)
                  if saved.get(k) != wanted.get(k) and not (
                      k not in saved and wanted.get(k) == defaults.get(k)))
  if differ:
    raise InputError(
        f'{workdir} holds a run with other settings ('
        + ', '.join(f'{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now'
                    for k in differ[:5])
        + '). Use another --root for other settings.')
  try:
    results = run_files.read_results(workdir)
  except InputError as e:
    logging.warning('%s: running the job again.', e)
    return False
  return bool(isinstance(results, dict) and results.get('complete'))


def _check_voc_dataset(job: Job, config) -> None:
  """Raises InputError unless a PASCAL VOC job's dataset is VOC, naming
  ``--voc_dataset`` (the configs' default folder may not be there)."""
  if job.voc and not voc.is_voc(config.dataset):
    raise InputError(
        f'{job.name}: its dataset {config.dataset!r} is not PASCAL VOC: '
        'give --voc_dataset=<VOCdevkit folder> holding VOC2007/ '
        '(classification, detection) and VOC2012/ (segmentation; TFDS has '
        'no VOC masks)')


def proposals_command(dataset: str, split: str) -> str:
  """The ``rotnet-proposals`` command a proposals job runs."""
  return ' '.join(shlex.quote(a) for a in (
      PROPOSALS_COMMAND, f'--dataset={dataset}', f'--split={split}'))


def check_proposals_files(template: str,
                          splits=DETECTION_RUN_SPLITS) -> None:
  """Raises unless `template` (``--proposals``) names an existing file for
  each of `splits` (``{split}`` replaced by each).

  Raises:
    InputError: `template` has no ``{split}`` (training and testing would
      read one file).
    MissingInputError: a split's file does not exist.
  """
  if '{split}' not in template:
    raise InputError(
        f'--proposals={template!r} must hold {{split}}: detection trains on '
        f'{splits[0]} and tests on {splits[1]}, each with its own file '
        '(e.g. /data/selective_search_data/voc_2007_{split}.mat)')
  for split in splits:
    path = os.path.expanduser(template.replace('{split}', split))
    if not os.path.isfile(path):
      raise MissingInputError(
          f'--proposals: {path} (split {split}) does not exist; compute it '
          f'with {PROPOSALS_COMMAND} --dataset=... --split={split} '
          '--output=..., or leave --proposals out to compute the default '
          'files')


def run_proposals(dataset: str, split: str) -> str:
  """Computes the proposals of `split` at their default path unless they
  are there; returns the path.

  An unfinished computation there resumes (``proposals.compute``).

  Raises:
    InputError, MissingInputError: as ``rotnet-proposals`` (a bad folder,
      OpenCV's contrib modules missing...).
  """
  path = proposals_lib.default_path(voc.open_detection(dataset, split))
  if os.path.isfile(path):
    logging.info('%s: finished already, skipped.', path)
    return path
  # Under several processes (a pod slice) one computes, beside the shared
  # data, while the others wait: they would otherwise write (and remove)
  # the same unfinished chunks.
  if jax.process_index() == 0:
    (summary,) = proposals_lib.compute_splits(dataset, split)
    logging.info('wrote %s: %d images, %.0f proposals per image', path,
                 summary['images'], summary['mean_proposals'])
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'proposals {split}')
  return path


def reproduce(table: str, root: str, *, seeds=(0,), scale: float = 1.0,
              overrides: dict[str, Any] | None = None, ks=None,
              places_dataset: str | None = None,
              voc_dataset: str | None = None, proposals: str | None = None,
              quick: bool = False, dry_run: bool = False) -> list[str]:
  """Runs (or lists) the jobs of `table` under `root`.

  Arguments other than `table` and `root` are those of :func:`job_config`
  (`ks`: the semi table's K); `dry_run` prints each job's command line
  instead of running it. A proposals job (``Job.proposals_split``) runs
  once, before the first job that needs it; with `proposals` (files of
  every detection split, checked first) it is left out.

  Returns:
    The workdirs of the table's training jobs, in order (proposals jobs
    have none: their files are beside the data).

  Raises:
    InputError: a bad root or setting, a VOC job whose dataset is not VOC,
      `quick` with VOC jobs and no `voc_dataset` (a quick run must not
      start preparing TFDS ``voc/2007``), or `proposals` without
      ``{split}``.
    MissingInputError: a file `proposals` names does not exist.
  """
  if quick and not voc_dataset and any(job.voc for job in table_jobs(table)):
    raise InputError(
        f'{table} --quick needs --voc_dataset=<VOCdevkit folder> (holding '
        'VOC2007/ and VOC2012/), e.g. a few images of each: the configs\' '
        'own, TFDS voc/2007 and ./VOCdevkit, are the whole datasets.')
  if proposals:
    if not any(job.proposals_split for job in table_jobs(table)):
      raise InputError(f'--proposals: {table} has no detection job (pascal '
                       'has)')
    check_proposals_files(proposals)
  filesystem.check_writable_folder(root, '--root')
  root = filesystem.absolute(root)  # A gs:// root stays a URL.
  table_run = table_jobs(table, ks or DEFAULT_KS, root=root)
  message = note(table, root)
  if message:
    logging.warning('%s', message)
  # Every job's config and workdir is checked before the first one runs:
  # a bad setting stops the table at once, not hours in. Keys: a training
  # job's workdir; a proposals job's (dataset, split), once for all seeds.
  jobs = {}
  for seed in seeds:
    for job in table_run:
      if job.proposals_split and proposals:
        continue  # Given as files.
      config = job_config(job, root=root, seed=seed, scale=scale,
                          overrides=overrides, places_dataset=places_dataset,
                          voc_dataset=voc_dataset, proposals=proposals,
                          quick=quick)
      if job.proposals_split:
        key = (config.dataset, job.proposals_split)
        if key not in jobs:
          _check_voc_dataset(job, config)
          jobs[key] = (job, config, False)
        continue
      workdir = filesystem.join(root, f'seed{seed}', job.name)
      if workdir in jobs:
        continue
      _check_voc_dataset(job, config)
      config = validation.check_config(config)
      run_files.check_workdir(workdir)
      jobs[workdir] = (job, config, not dry_run and finished(workdir, config))
  for key, (job, config, done) in jobs.items():
    if job.proposals_split:
      command = proposals_command(config.dataset, job.proposals_split)
      logging.info('%s: %s', job.name, command)
      if dry_run:
        print(command)
      else:
        run_proposals(config.dataset, job.proposals_split)
      continue
    workdir = key
    logging.info('%s: %s', job.experiment, command_line(job, config,
                                                        workdir))
    if dry_run:
      print(command_line(job, config, workdir))
    elif done:
      logging.info('%s: finished already, skipped.', workdir)
    else:
      train.train_and_evaluate(config, workdir)
  return [key for key, (job, _, _) in jobs.items() if not job.proposals_split]
