"""A function over a whole dataset in fixed-size batches."""

from typing import Callable

import jax
import numpy as np


def map_in_batches(
    fn: Callable[[np.ndarray], object],
    images: np.ndarray,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
):
  """`fn` over `images` in batches of `batch_size`; outputs concatenated along axis 0.

  The last batch is padded with copies of its first image (their outputs
  dropped), so a jitted `fn` compiles once. `fn` may return an array or a
  pytree of arrays with a leading batch axis. `progress(done, total)` is
  called after each batch.
  """
  n = len(images)
  if n == 0:
    raise ValueError('map_in_batches: no images given.')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be at least 1.')
  batch_size = min(batch_size, n)
  outputs = []
  for start in range(0, n, batch_size):
    chunk = images[start : start + batch_size]
    real = len(chunk)
    if real < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real, axis=0)])
    outputs.append(jax.tree.map(lambda a, real=real: np.asarray(a)[:real], fn(chunk)))
    if progress is not None:
      progress(start + real, n)
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
