"""Data sources: uint8 batches as global arrays sharded on the ``data`` axis.

Two interchangeable sources (``rotnet_jax.data.source.Source``) give the
same batches, ``{'image': uint8 [B, S, S, 3], 'label': int32 [B],
'mask': f32 [B]}``, ``mask`` 0 marking padding in the last evaluation batch:

* ``pipeline='device'`` (:class:`DeviceSource`): the split lives on the
  devices; batches are gathered and augmented inside the jitted step.
  Imports neither TensorFlow nor TFDS (except to read a TFDS dataset the
  first time, before caching it).
* ``pipeline='tfdata'`` (``TFDataSource``): a tf.data host pipeline.
"""

import functools

from jax.sharding import Mesh

from rotnet_jax.data import arrays
from rotnet_jax.data.arrays import dataset_kind
from rotnet_jax.data.device_source import DeviceSource

PIPELINES = ('device', 'tfdata')


def make_source(config, split: str, mesh: Mesh, *, train: bool):
  """Builds the configured source for `split`.

  Args:
    config: the run config (``dataset``, ``data_dir``, ``cache_dir``,
      ``pipeline``, ``image_size``, ``batch_size``, ``seed``,
      ``shuffle_buffer_size``, and for training ``num_train_examples``,
      ``examples_per_class``, ``epoch_examples``).
    split: split name, e.g. ``config.train_split``.
    mesh: the data mesh the batches are sharded over.
    train: shuffle, drop the last partial batch and augment if True; keep
      the order and pad the last batch (``mask`` 0) if False. Evaluation
      always reads the whole split.
  """
  subset, epoch_length = None, 0
  if train:
    epoch_length = config.epoch_examples
    if config.num_train_examples or config.examples_per_class:
      subset = functools.partial(
          arrays.training_subset, num_examples=config.num_train_examples,
          examples_per_class=config.examples_per_class)
  common = dict(mesh=mesh, batch_size=config.batch_size, train=train,
                seed=config.seed, subset=subset, epoch_length=epoch_length)
  if config.pipeline == 'device':
    data = arrays.load_split(config.dataset, split,
                             image_size=config.image_size,
                             data_dir=config.data_dir,
                             cache_dir=config.cache_dir)
    return DeviceSource(data, **common)
  if config.pipeline == 'tfdata':
    from rotnet_jax.data import tfdata_source  # pylint: disable=g-import-not-at-top
    return tfdata_source.TFDataSource(
        config.dataset, split, image_size=config.image_size,
        data_dir=config.data_dir,
        shuffle_buffer_size=config.shuffle_buffer_size, **common)
  raise ValueError(f'config.pipeline={config.pipeline!r}; valid: {PIPELINES}')


__all__ = ['DeviceSource', 'PIPELINES', 'dataset_kind', 'make_source']
