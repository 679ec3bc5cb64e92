"""Training state shared by both trainers."""

from typing import Any

from flax.training import train_state


class TrainState(train_state.TrainState):
  """A flax TrainState that also carries BatchNorm running statistics.

  `step`, `params`, `opt_state` come from flax; `batch_stats` is the mutable
  'batch_stats' collection, updated by every train-mode forward pass.
  """

  batch_stats: Any = None
