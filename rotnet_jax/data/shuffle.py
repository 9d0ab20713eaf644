"""Per-epoch example order, a pure function of (seed, epoch).

Both data sources draw their shuffles here, so a run resumed at an epoch
boundary sees exactly the batches an uninterrupted run would have seen, and
every process of a multi-host run computes the same global order.
"""

import math

import numpy as np

from rotnet_jax.errors import InputError


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
  """A 32-bit seed derived from the run `seed`, the `epoch` and `more`."""
  return int(np.random.SeedSequence([seed, epoch, *more]).generate_state(1)[0])


def epoch_order(num_examples: int, seed: int, epoch: int,
                length: int | None = None) -> np.ndarray:
  """Example indices for one epoch of `length` draws (default: one pass).

  A longer epoch than the dataset (the semi-supervised runs keep 50,000
  samples per epoch on K images per class) concatenates fresh permutations,
  so every example is drawn equally often, give or take one.
  """
  length = num_examples if length is None else length
  rng = np.random.default_rng(epoch_seed(seed, epoch))
  passes = math.ceil(length / num_examples)
  return np.concatenate([rng.permutation(num_examples)
                         for _ in range(passes)])[:length]


def steps_per_epoch(num_examples: int, batch_size: int, *, train: bool,
                    epoch_length: int = 0, processes: int = 1) -> int:
  """Steps of one epoch, the same on every process.

  Training: full batches of an epoch of `epoch_length` draws (default one
  pass); the remainder is dropped. Evaluation: enough batches for the
  largest of `processes` equal shares (``num_examples / processes``, rounded
  up) to be seen once; the last batch is padded.

  Raises:
    InputError: a training epoch is shorter than one batch.
  """
  if train:
    steps = (epoch_length or num_examples) // batch_size
    if steps == 0:
      raise InputError(f'batch_size={batch_size} is larger than an epoch '
                       f'({epoch_length or num_examples} training examples)')
    return steps
  largest_share = math.ceil(num_examples / processes)
  return math.ceil(largest_share / (batch_size // processes))
