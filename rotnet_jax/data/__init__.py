"""Data sources: uint8 batches as global arrays sharded on the ``data`` axis.

Two interchangeable sources (``rotnet_jax.data.source.Source``) give the
same batches, ``{'image': uint8 [B, S, S, 3], 'label': int32 [B],
'mask': f32 [B]}``, ``mask`` 0 marking padding in the last evaluation batch:

* ``pipeline='device'`` (:class:`DeviceSource`): the split lives on the
  devices; batches are gathered and augmented inside the jitted step.
  Imports neither TensorFlow nor TFDS (except to read a TFDS dataset the
  first time, before caching it).
* ``pipeline='tfdata'`` (``TFDataSource``): a tf.data host pipeline.

Both read the split through ``rotnet_jax.data.datasets.open_split``, which
decides how the dataset is read, checks it and applies the training subset.

PASCAL VOC (``mode='transfer'``) has targets of other shapes (20 labels
per image, a label per pixel) and its own protocol's augmentations: its
splits are read by ``data/voc.py`` and batched by ``VOCSource``, a host
pipeline of numpy and PIL (no TensorFlow, whatever ``pipeline`` says).
"""

from jax.sharding import Mesh

from rotnet_jax.config_schema import PIPELINES
from rotnet_jax.data import arrays
from rotnet_jax.data import datasets
from rotnet_jax.data.device_source import DeviceSource


def make_source(config, split: str, mesh: Mesh, *, train: bool):
  """Builds the configured source for `split`.

  Args:
    config: the run config (``dataset``, ``data_dir``, ``cache_dir``,
      ``pipeline``, ``image_size``, ``train_split``, ``batch_size``,
      ``seed``, ``shuffle_buffer_size``, and for training
      ``num_train_examples``, ``examples_per_class``, ``epoch_examples``).
    split: split name, e.g. ``config.train_split``.
    mesh: the data mesh the batches are sharded over.
    train: shuffle, drop the last partial batch and augment if True; keep
      the order and pad the last batch (``mask`` 0) if False. Evaluation
      always reads the whole split.
  """
  if config.mode == 'transfer':
    return _voc_source(config, split, mesh, train=train)
  device = config.pipeline == 'device'
  opened = datasets.open_split(config, split, train=train, decoded=device)
  common = dict(mesh=mesh, batch_size=config.batch_size, train=train,
                seed=config.seed,
                epoch_length=config.epoch_examples if train else 0)
  if device:
    return DeviceSource(
        arrays.SplitArrays(opened.images, opened.labels, opened.num_classes,
                           opened.class_names),
        **common)
  from rotnet_jax.data import tfdata_source  # pylint: disable=g-import-not-at-top
  return tfdata_source.TFDataSource(
      opened, shuffle_buffer_size=config.shuffle_buffer_size, **common)


def _voc_source(config, split: str, mesh: Mesh, *, train: bool):
  """The VOC split of ``config.transfer_task``, batched by VOCSource."""
  from rotnet_jax.data import voc  # pylint: disable=g-import-not-at-top
  from rotnet_jax.data import voc_source  # pylint: disable=g-import-not-at-top
  if config.transfer_task == 'voc_detection':
    return _detection_source(config, split, mesh, train=train)
  if config.transfer_task == 'voc_segmentation':
    opened = voc.open_segmentation(config.dataset, split)
  else:
    opened = voc.open_classification(config.dataset, split,
                                     data_dir=config.data_dir)
  return voc_source.VOCSource(
      opened, mesh=mesh, batch_size=config.batch_size, train=train,
      seed=config.seed,
      image_size=config.transfer_image_size or config.image_size,
      test_crops=config.test_crops, scale_range=tuple(config.scale_range),
      epoch_length=config.epoch_examples if train else 0)


def _detection_source(config, split: str, mesh: Mesh, *, train: bool):
  """The VOC2007 detection split with its proposals, for Fast R-CNN."""
  # pylint: disable=g-import-not-at-top
  from rotnet_jax.data import detection_source
  from rotnet_jax.data import proposals
  from rotnet_jax.data import voc
  # pylint: enable=g-import-not-at-top
  opened = voc.open_detection(config.dataset, split)
  path = (config.proposals.replace('{split}', split) if config.proposals else
          proposals.default_path(opened))
  regions = proposals.load(path, opened,
                           max_proposals=0 if train else config.max_proposals)
  return detection_source.DetectionSource(
      opened, regions, mesh=mesh, batch_size=config.batch_size, train=train,
      seed=config.seed, train_scales=tuple(config.train_scales),
      test_scale=config.test_scale, max_size=config.max_size,
      rois_per_image=config.rois_per_image,
      foreground_fraction=config.foreground_fraction,
      fill=tuple(config.mean_rgb),
      epoch_length=config.epoch_examples if train else 0)


__all__ = ['DeviceSource', 'PIPELINES', 'make_source']
