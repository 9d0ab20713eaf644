"""The interface both data sources implement.

A training or evaluation step is compiled as
``step(state, materialize(resident, inputs))``: ``epoch(e)`` yields the
per-step ``inputs`` (small index arrays for the device-resident source,
whole batches for tf.data), ``resident`` is what lives on the devices for
the whole run (the dataset, or nothing), and ``materialize`` is pure, so it
runs inside the jitted step.
"""

from collections.abc import Iterator
from typing import Any, Protocol


class Source(Protocol):
  """Batches ``{'image': uint8 [B,S,S,3], 'label': int32 [B], 'mask': f32 [B]}``.

  Attributes:
    num_examples: examples of the split (after any training subset).
    num_classes: classes of the dataset's labels.
    class_names: what label ``k`` means, where the dataset names its
      classes (image folders, digits); empty otherwise.
    batch_size: global batch size.
    steps_per_epoch: training: full batches per epoch (a partial last batch
      is dropped); evaluation: batches that cover every example once, the
      last one padded with ``mask`` 0.
    resident: pytree of device arrays passed to every step.
  """
  num_examples: int
  num_classes: int
  class_names: tuple[str, ...]
  batch_size: int
  steps_per_epoch: int
  resident: Any

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Any]:
    """Yields the inputs of steps ``start_step, ..., steps_per_epoch - 1``
    of `epoch`.

    A run resumed from a mid-epoch checkpoint passes the steps it already
    took as `start_step`: the steps yielded are exactly the ones an
    uninterrupted epoch yields from there (same examples, same
    augmentation), and the skipped ones cost (almost) nothing.
    """

  def materialize(self, resident: Any, inputs: Any) -> dict[str, Any]:
    """Builds the batch from `inputs`; pure, traced inside jit."""


class HostBatches:
  """Mixin for sources whose ``inputs`` already are the complete batch."""

  @property
  def resident(self):
    return {}

  def materialize(self, resident, inputs):
    del resident
    return inputs
