"""Exact k nearest neighbours by inner product, self excluded, behind one interface.

Three engines give the same neighbours (up to ties):

- 'jax': blocked matmul on device; features, similarities and indices stay there. Each block
  of rows is compared with every feature, then selected in two steps: the maximum of each
  run of `group` consecutive columns, the top-k runs, and the top-k of the k * group values
  they hold. The k-th largest run maximum is a lower bound on the k-th largest value, so
  every true neighbour lies in one of the kept runs: the result is exact, while `lax.top_k`
  reads `group` times fewer values than a top-k over whole rows (which costs as much as the
  matmul on CPU). Memory is one `block_size x N` block of similarities.
- 'cpu': the `groundwork_cpu` package's search (cpu_kernels/: oneDNN matrix products on
  cache-sized tiles, scanned for candidates while in cache), on NumPy arrays.
- 'faiss': `IndexFlatIP`, the engine of the reference code (its GPU build is used when
  installed), whose compressed indexes also carry the search past one machine's memory.

'auto' picks 'cpu' where `groundwork.backend.cpu_kernels()` has the package (JAX on the CPU,
package installed), else 'jax'; their speeds: docs/performance.md, "Label propagation".
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import backend

ENGINES = ('auto', 'jax', 'faiss', 'cpu')


def check_engine(engine: str) -> None:
  """A ValueError unless `engine` is one of ENGINES."""
  if engine not in ENGINES:
    raise ValueError(f'kNN engine {engine!r} (config.lp.knn_engine) is not one of {ENGINES}.')


def resolve(engine: str) -> str:
  """The engine 'auto' stands for here; any other is itself."""
  check_engine(engine)
  if engine != 'auto':
    return engine
  return 'cpu' if backend.cpu_kernels() is not None else 'jax'


def l2_normalize(features) -> jax.Array:
  """Rows scaled to unit L2 norm (a zero row stays zero), float32, on device."""
  x = jnp.asarray(features, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_search(features, k: int, engine: str = 'auto', block_size: int = 512):
  """The k most similar other rows of each row of `features` `[N, d]`, k in [1, N - 1].

  Similarity is the inner product of L2-normalised rows; row i never lists itself, even
  when another row is an exact duplicate of it.

  Returns `(similarities [N, k] float32, indices [N, k] int32)`, best first: jax arrays
  on device from 'jax', NumPy arrays from 'cpu' and 'faiss' (which search on the host).
  `block_size` (rows per matmul block) only matters to 'jax'.
  """
  engine = resolve(engine)
  x = jnp.asarray(features, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f'features must be [N, d]; got shape {x.shape}.')
  x = l2_normalize(x)
  if engine == 'jax':
    if block_size < 1:
      raise ValueError(f'block_size={block_size} must be positive.')
    return _jax_search(x, k, block_size)
  x = np.asarray(x)
  if engine == 'faiss':
    return _faiss_search(x, k)
  return _cpu_search(x, k)


def _cpu_search(x: np.ndarray, k: int):
  sims, idx = backend.require_cpu_kernels().knn_search(x, k)
  return np.asarray(sims, np.float32), np.asarray(idx, np.int32)


# ----------------------------------------------------------------------------
# JAX: blocked matmul + two-step exact top-k.
# ----------------------------------------------------------------------------
def _group_width(n_padded: int, k: int) -> int:
  # Runs must leave at least k candidates runs; 16 keeps the candidate top-k
  # small (k * 16) while cutting the run top-k 16-fold.
  return 16 if n_padded >= 64 * k else 1


@functools.partial(jax.jit, static_argnames=('k', 'group', 'block_size', 'n_valid'))
def _search_block(queries, x, start, *, k: int, group: int, block_size: int, n_valid: int):
  block = jax.lax.dynamic_slice_in_dim(queries, start, block_size)
  n_padded = x.shape[0]
  sims = jnp.dot(block, x.T, precision=jax.lax.Precision.HIGHEST)
  col = jnp.arange(n_padded)[None, :]
  row = start + jnp.arange(block_size)[:, None]
  sims = jnp.where((col == row) | (col >= n_valid), -jnp.inf, sims)
  runs = sims.reshape(block_size, n_padded // group, group)
  _, best_runs = jax.lax.top_k(runs.max(axis=-1), k)
  candidates = jnp.take_along_axis(runs, best_runs[..., None], axis=1).reshape(
      block_size, k * group
  )
  values, position = jax.lax.top_k(candidates, k)
  run = jnp.take_along_axis(best_runs, position // group, axis=1)
  return values, (run * group + position % group).astype(jnp.int32)


def _jax_search(x: jax.Array, k: int, block_size: int):
  n = x.shape[0]
  group = _group_width(n, k)
  block_size = min(block_size, n)
  # The database padded to whole runs, the queries to whole blocks (one compiled shape).
  database = jnp.pad(x, ((0, -n % group), (0, 0)))
  queries = jnp.pad(x, ((0, -n % block_size), (0, 0)))
  # A Python loop over jitted blocks: each block is one XLA call, so nothing
  # (like lax.map around top_k) can turn the selection into a full sort.
  sims, idx = zip(
      *(
          _search_block(
              queries, database, start, k=k, group=group, block_size=block_size, n_valid=n
          )
          for start in range(0, n, block_size)
      )
  )
  return jnp.concatenate(sims)[:n], jnp.concatenate(idx)[:n]


# ----------------------------------------------------------------------------
# faiss: IndexFlatIP for k + 1, then drop self wherever it is in the list.
# ----------------------------------------------------------------------------
def _faiss_search(x: np.ndarray, k: int):
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "the kNN engine 'faiss' needs the faiss-cpu package "
        "(pip install faiss-cpu), or use engine 'jax'."
    ) from e
  n, d = x.shape
  index = faiss.IndexFlatIP(d)
  if hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0:
    index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
  index.add(np.ascontiguousarray(x))
  sims, idx = index.search(np.ascontiguousarray(x), k + 1)
  return drop_self(sims, idx, k)


def drop_self(sims: np.ndarray, idx: np.ndarray, k: int):
  """Remove row i's own index from its k + 1 results, keeping the order.

  With exact duplicates, self need not come first (the reference code drops
  column 0 and so can keep self and lose a neighbour); when self is absent
  (more than k duplicates), the last result is dropped.
  """
  n = idx.shape[0]
  keep = idx != np.arange(n)[:, None]
  keep[keep.all(axis=1), k] = False
  return (sims[keep].reshape(n, k).astype(np.float32), idx[keep].reshape(n, k).astype(np.int32))
