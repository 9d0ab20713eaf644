"""Per-epoch example order, a pure function of (seed, epoch).

Both data sources draw their shuffles here, so a run resumed at an epoch
boundary sees exactly the batches an uninterrupted run would have seen, and
every process of a multi-host run computes the same global order.
"""

import math

import numpy as np


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
