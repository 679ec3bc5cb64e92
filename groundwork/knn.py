"""Exact k nearest neighbours by inner product of L2-normalised rows.

`knn_search(features, k)`: every row against all the others (self excluded), behind three
engines that give the same neighbours (up to ties):

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

`search(queries, database, k)`: queries against another set on device (the 'jax' engine's
blocks), optionally excluding one database row per query; `knn_in_memory(x, k)`: the whole
similarity matrix at once, traceable and vmappable (a few-shot episode's graph).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import backend

ENGINES = ('auto', 'jax', 'faiss', 'cpu')


def check_engine(engine: str, field: str = 'engine') -> None:
  """A ValueError naming `field` (the argument or config field that chose it) unless `engine`
  is one of ENGINES."""
  if engine not in ENGINES:
    raise ValueError(f'kNN engine {engine!r} ({field}) is not one of {ENGINES}.')


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


def search(queries, database, k: int, *, exclude=None, block_size: int = 512):
  """The k most similar rows of `database [N, d]` to each row of `queries [Q, d]`, on device.

  Similarity is the inner product of L2-normalised rows (the 'jax' engine's blocks).
  `exclude [Q]` names one database row each query must not list (its own row, when the
  queries are database rows; -1 for none); k in [1, N], or [1, N - 1] with exclusions.

  Returns jax arrays `(similarities [Q, k] float32, indices [Q, k] int32)`, best first.
  """
  q, x = jnp.asarray(queries, jnp.float32), jnp.asarray(database, jnp.float32)
  if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
    raise ValueError(f'queries [Q, d] and database [N, d] needed; got {q.shape} and {x.shape}.')
  limit = x.shape[0] - (exclude is not None)
  if not 1 <= k <= limit:
    raise ValueError(f'k={k} must lie in [1, {limit}] for a database of {x.shape[0]} rows.')
  if block_size < 1:
    raise ValueError(f'block_size={block_size} must be positive.')
  exclude = jnp.full(q.shape[0], -1, jnp.int32) if exclude is None else exclude
  exclude = jnp.asarray(exclude, jnp.int32)
  if exclude.shape != q.shape[:1]:
    raise ValueError(f'exclude must be [Q] = [{q.shape[0]}]; got shape {exclude.shape}.')
  return _blocked_search(l2_normalize(q), l2_normalize(x), exclude, k, block_size)


def knn_in_memory(x: jax.Array, k: int):
  """`knn_search` for a small set inside traced code (vmap over few-shot episodes): the whole
  `[N, N]` similarity matrix at once, self excluded; `(similarities, indices)` `[N, k]`."""
  x = l2_normalize(x)
  n = x.shape[0]
  group = _group_width(n, k)
  sims = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  sims = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sims)
  return _top_k(jnp.pad(sims, ((0, 0), (0, -n % group)), constant_values=-jnp.inf), k, group)


# ----------------------------------------------------------------------------
# JAX: blocked matmul + two-step exact top-k.
# ----------------------------------------------------------------------------
def _group_width(n_padded: int, k: int) -> int:
  # Runs must leave at least k candidates runs; 16 keeps the candidate top-k
  # small (k * 16) while cutting the run top-k 16-fold.
  return 16 if n_padded >= 64 * k else 1


def _top_k(sims: jax.Array, k: int, group: int):
  """The k largest of each row of `sims [B, M]` (M a multiple of `group`), by run maxima."""
  rows, width = sims.shape
  runs = sims.reshape(rows, width // group, group)
  _, best_runs = jax.lax.top_k(runs.max(axis=-1), k)
  candidates = jnp.take_along_axis(runs, best_runs[..., None], axis=1).reshape(rows, k * group)
  values, position = jax.lax.top_k(candidates, k)
  run = jnp.take_along_axis(best_runs, position // group, axis=1)
  return values, (run * group + position % group).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('k', 'group', 'block_size', 'n_valid'))
def _search_block(
    queries, excluded, x, start, *, k: int, group: int, block_size: int, n_valid: int
):
  block = jax.lax.dynamic_slice_in_dim(queries, start, block_size)
  skip = jax.lax.dynamic_slice_in_dim(excluded, start, block_size)
  sims = jnp.dot(block, x.T, precision=jax.lax.Precision.HIGHEST)
  col = jnp.arange(x.shape[0])[None, :]
  sims = jnp.where((col == skip[:, None]) | (col >= n_valid), -jnp.inf, sims)
  return _top_k(sims, k, group)


def _jax_search(x: jax.Array, k: int, block_size: int):
  return _blocked_search(x, x, jnp.arange(x.shape[0], dtype=jnp.int32), k, block_size)


def _blocked_search(queries: jax.Array, x: jax.Array, excluded: jax.Array, k: int, block_size: int):
  n, m = x.shape[0], queries.shape[0]
  group = _group_width(n, k)
  block_size = min(block_size, m)
  # The database padded to whole runs, the queries to whole blocks (one compiled shape).
  database = jnp.pad(x, ((0, -n % group), (0, 0)))
  queries = jnp.pad(queries, ((0, -m % block_size), (0, 0)))
  excluded = jnp.pad(excluded, (0, -m % block_size), constant_values=-1)
  # A Python loop over jitted blocks: each block is one XLA call, so nothing
  # (like lax.map around top_k) can turn the selection into a full sort.
  sims, idx = zip(
      *(
          _search_block(
              queries,
              excluded,
              database,
              start,
              k=k,
              group=group,
              block_size=block_size,
              n_valid=n,
          )
          for start in range(0, m, block_size)
      )
  )
  return jnp.concatenate(sims)[:m], jnp.concatenate(idx)[:m]


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
