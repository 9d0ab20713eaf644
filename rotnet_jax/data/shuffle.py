"""Per-epoch example order, a pure function of (seed, epoch).

Both data sources draw their shuffles here, so a run resumed at an epoch
boundary sees exactly the batches an uninterrupted run would have seen.
"""

import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed derived from the run `seed` and the `epoch`."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """A permutation of ``range(num_examples)`` for `epoch`."""
  return np.random.default_rng(epoch_seed(seed, epoch)).permutation(
      num_examples)
