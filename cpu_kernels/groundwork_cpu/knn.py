"""Exact k nearest neighbours by inner product on CPU, self excluded (csrc/knn.cc).

The C++ search multiplies cache-sized tiles of queries and database rows with oneDNN and
scans each tile, while it is in cache, against every row's current k-th best similarity; it
is faster than faiss's `IndexFlatIP` on the same cores (NOTES.md). It searches k + 1
neighbours, the row itself among them, and `drop_self` removes the row's own index.
"""

import ctypes

import numpy as np

from groundwork_cpu import _native

LIBRARY = _native.Library('knn', 'kNN search (oneDNN tiles)')
_search = _native.load(LIBRARY).groundwork_cpu_knn_search
_search.argtypes = [
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_int64,
]
_search.restype = ctypes.c_int


def knn_search(x, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k most similar other rows of each row of `x`.

  Args:
    x: [N, d] float32, rows already L2-normalised (similarity is the inner product).
    k: neighbours per row, 1 <= k <= N - 1.
  Returns:
    NumPy (similarities [N, k] float32, indices [N, k] int32), best first (equal similarities
    by index). Row i never lists itself, even when another row is an exact duplicate of it.
  """
  x = np.ascontiguousarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f'x must be [N, d]; got shape {x.shape}.')
  n, d = x.shape
  if not 0 < k < n:
    raise ValueError(
        f'k={k} must be in [1, N-1] = [1, {n - 1}] for N={n} rows '
        '(a row is never its own neighbour).'
    )
  if d == 0:
    raise ValueError('x has no columns.')
  sims = np.empty((n, k + 1), np.float32)
  idx = np.empty((n, k + 1), np.int32)
  error = ctypes.create_string_buffer(512)
  if _search(x.ctypes.data, n, d, k + 1, sims.ctypes.data, idx.ctypes.data, error, 512):
    raise RuntimeError(error.value.decode())
  return drop_self(sims, idx, k)


def drop_self(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Removes row i's own index from its k + 1 results, keeping the order.

  With exact duplicates, self need not come first (dropping column 0, as the reference code
  does, can keep self and lose a neighbour); where self is absent (more than k duplicates of
  the row), the last result is dropped.
  """
  n = idx.shape[0]
  keep = idx != np.arange(n)[:, None]
  keep[keep.all(axis=1), k] = False
  return (sims[keep].reshape(n, k).astype(np.float32), idx[keep].reshape(n, k).astype(np.int32))
