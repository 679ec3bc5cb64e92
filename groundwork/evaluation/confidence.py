"""Mean and 95% confidence interval of per-episode accuracies."""

import numpy as np


def mean_ci95(values) -> tuple[float, float]:
  """Returns (mean, 1.96 * std / sqrt(n)), the interval the few-shot papers report.

  std is the population standard deviation (numpy's default), as in the
  common few-shot evaluation code.
  """
  values = np.asarray(values, dtype=np.float64).ravel()
  if values.size == 0:
    raise ValueError('mean_ci95 needs at least one value; got none.')
  return float(values.mean()), float(1.96 * values.std() / np.sqrt(values.size))
