"""Device-resident source: the whole split lives on every device.

The fast path for CIFAR-sized data (CIFAR-10 train is 150 MB as uint8). The
images are put on the devices once; each epoch the host sends only the
example order (``int32 [steps, B]``), and the jitted step gathers its batch
from the resident array and augments it there. No host decoding, no
host-to-device image copies, and no TensorFlow import.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rotnet_jax import parallel
from rotnet_jax.data import shuffle
from rotnet_jax.data import transforms
from rotnet_jax.data.arrays import SplitArrays

# Folded into the run seed so augmentation draws never coincide with the
# model initialisation's keys (which also start from the run seed).
_AUGMENT_STREAM = 0x61756720


class DeviceSource:
  """Batches gathered on device from a resident copy of the split.

  Implements ``rotnet_jax.data.source.Source``.
  """

  def __init__(self, data: SplitArrays, *, mesh: Mesh, batch_size: int,
               train: bool, seed: int, epoch_length: int = 0):
    """Puts `data` on the devices of `mesh`.

    Args:
      data: the examples to use (a training subset is already applied, by
        ``rotnet_jax.data.datasets.open_split``).
      mesh: the data mesh.
      batch_size: global batch size.
      train: shuffle, augment and drop the last partial batch if True; keep
        the order and pad the last batch (``mask`` 0) if False.
      seed: run seed (order and augmentation).
      epoch_length: samples per training epoch (0: one pass over the data).
    """
    self.num_examples = len(data.images)
    self.num_classes = data.num_classes
    self.class_names = data.class_names
    self.batch_size = batch_size
    self.train = train
    self.seed = seed
    self._mesh = mesh
    self._epoch_length = epoch_length or self.num_examples
    # Every process holds the whole split: one share.
    self.steps_per_epoch = shuffle.steps_per_epoch(
        self.num_examples, batch_size, train=train, epoch_length=epoch_length)
    self.resident = parallel.replicate(
        mesh, {'image': data.images, 'label': data.labels})

  def epoch(self, epoch: int, start_step: int = 0):
    """Yields the per-step inputs of `epoch`, from `start_step` on, for
    :meth:`materialize`.

    The order of the whole epoch is computed (a permutation: cheap) and
    sent once; resuming mid-epoch just starts the loop later. Each step's
    augmentation key depends on (seed, epoch, step) alone.
    """
    steps, batch = self.steps_per_epoch, self.batch_size
    if self.train:
      order = shuffle.epoch_order(self.num_examples, self.seed, epoch,
                                  self._epoch_length)[:steps * batch]
      mask = np.ones(steps * batch, np.float32)
    else:
      # Padding repeats real examples; their mask 0 removes them again.
      order = np.arange(steps * batch) % self.num_examples
      mask = (np.arange(steps * batch) < self.num_examples).astype(np.float32)
    # Rows are steps; each row is split over the devices like a batch.
    sharding = NamedSharding(self._mesh,
                             PartitionSpec(None, parallel.DATA_AXIS))
    indices = _global(order.astype(np.int32).reshape(steps, batch), sharding)
    mask = _global(mask.reshape(steps, batch), sharding)
    for step in range(start_step, steps):
      yield {'indices': indices, 'mask': mask, 'epoch': np.int32(epoch),
             'step': np.int32(step)}

  def materialize(self, resident, inputs):
    """Gathers (and for training augments) one batch; runs inside jit."""
    indices = inputs['indices'][inputs['step']]
    images = resident['image'][indices]
    if self.train:
      key = jax.random.fold_in(jax.random.key(self.seed), _AUGMENT_STREAM)
      key = jax.random.fold_in(jax.random.fold_in(key, inputs['epoch']),
                               inputs['step'])
      images = transforms.random_crop_flip(images, key)
    return {'image': images, 'label': resident['label'][indices],
            'mask': inputs['mask'][inputs['step']]}


def _global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """`array` (identical on every process) as a global array."""
  return jax.make_array_from_callback(array.shape, sharding,
                                      lambda index: array[index])
