"""Diffusion on a kNN graph: Z = (I - alpha W)^-1 Y by conjugate gradient.

One kernel used three ways: label propagation for semi-supervised learning (Iscen et al.,
CVPR 2019; semisup.label_propagation), diffusion re-ranking for retrieval (Iscen et al.,
"Efficient Diffusion on Region Manifolds", CVPR 2017; `diffusion_ranking`), and label
propagation inside a few-shot episode (transductive inference; fsl.transductive).

1. kNN lists by inner product of L2-normalised features (groundwork.knn);
2. affinities s^gamma on the kNN edges, negatives clipped at 0 as both papers define them
   (`clip_negative=False` keeps them, as LP-DeepSSL's code does); optionally only mutual
   neighbours (the CVPR 2017 code's `knngraph`); W = D^-1/2 (A + A^T) D^-1/2 without its
   diagonal (groundwork.knn_graph);
3. (I - alpha W) Z = Y by conjugate gradient from 0, every column with its own step sizes and
   scipy's stopping test (LP-DeepSSL's one `scipy.sparse.linalg.cg` per class, the CVPR 2017
   code's `pcg` per query: tol 1e-6, 20 iterations).

Query-side re-ranking (CVPR 2017): the database graph is built once; a query's y holds its
similarities to its k_q nearest database items raised to gamma (clipped at 0), and the
database is ranked by z = (I - alpha W)^-1 y. The paper's global-descriptor setting: k = 50,
k_q = 10, gamma = 3, alpha = 0.99.
"""

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import knn
from groundwork import knn_graph

# Above this share of the images as neighbours, the kNN graph stops being local.
LARGE_K_SHARE = 0.1


class Graph(NamedTuple):
  """W of a kNN graph: `data` from `ops.build`, applied by `ops.matvec`."""

  data: Any
  ops: knn_graph.GraphOps
  num_nodes: int


# ----------------------------------------------------------------------------
# Conjugate gradient, one independent solve per column.
# ----------------------------------------------------------------------------
def conjugate_gradient(matvec, b: jax.Array, iterations: int, rtol: float = 1e-6) -> jax.Array:
  """Solve `A X = B` for symmetric positive definite A, each column on its own.

  Starts from 0 and stops a column once `||r|| < rtol ||b||` (scipy's test),
  else after `iterations` steps: column c follows `scipy.sparse.linalg.cg(A,
  b[:, c], rtol=rtol, maxiter=iterations)` step for step. The loop ends when
  every column has stopped.
  """
  b = jnp.asarray(b, jnp.float32)
  column_dot = lambda u, v: jnp.sum(u * v, axis=0)
  tolerance = rtol * jnp.sqrt(column_dot(b, b))
  going = lambda rho: (jnp.sqrt(rho) >= tolerance) & (rho > 0)

  def step(state):
    i, x, r, p, rho, active = state
    q = matvec(p)
    step_size = jnp.where(active, rho / jnp.where(active, column_dot(p, q), 1.0), 0.0)
    x = x + step_size * p
    r = r - step_size * q
    rho_next = column_dot(r, r)
    p = jnp.where(active, r + rho_next / jnp.where(active, rho, 1.0) * p, p)
    rho = jnp.where(active, rho_next, rho)
    return i + 1, x, r, p, rho, active & going(rho)

  rho = column_dot(b, b)
  state = (0, jnp.zeros_like(b), b, b, rho, going(rho))
  return jax.lax.while_loop(lambda s: (s[0] < iterations) & jnp.any(s[-1]), step, state)[1]


def solve(graph_data, seeds: jax.Array, *, ops, alpha: float, iterations: int, rtol: float):
  """`(I - alpha W) Z = Y` for `seeds` Y `[N, C]` by `conjugate_gradient`; traceable."""
  return conjugate_gradient(
      lambda p: p - alpha * ops.matvec(graph_data, p), seeds, iterations, rtol
  )


# ----------------------------------------------------------------------------
# The graph.
# ----------------------------------------------------------------------------
def affinities(similarities: jax.Array, gamma: float, clip_negative: bool) -> jax.Array:
  """`s^gamma` on the kNN edges; negatives clipped at 0 first if `clip_negative`.

  Unclipped, an odd integer gamma keeps a negative similarity negative, as the
  reference's `D ** 3`.
  """
  s = jnp.asarray(similarities, jnp.float32)
  if clip_negative:
    return jnp.maximum(s, 0.0) ** gamma
  return jax.lax.integer_pow(s, int(gamma))


def build_graph(
    similarities,
    indices,
    *,
    gamma: float = 3.0,
    clip_negative: bool = True,
    mutual: bool = False,
    ops: knn_graph.GraphOps | None = None,
) -> Graph:
  """W from kNN lists `similarities`, `indices` `[N, k]` (`knn.knn_search`), on device.

  `mutual`: keep an edge only where both ends list each other. `ops`: W's operator
  (`knn_graph.graph_ops()` when None).
  """
  ops = knn_graph.graph_ops() if ops is None else ops
  # A compiled program of its own: W's arrays (tens of MB) come back as outputs, which the
  # allocator keeps for the next call; as temporaries inside the solve's program they were
  # mapped afresh on every call (cpu_kernels/NOTES.md).
  data = _graph(
      jnp.asarray(similarities, jnp.float32),
      jnp.asarray(indices, jnp.int32),
      ops=ops,
      gamma=float(gamma),
      clip_negative=bool(clip_negative),
      mutual=bool(mutual),
  )
  return Graph(data, ops, jnp.shape(indices)[0])


@functools.partial(jax.jit, static_argnames=('ops', 'gamma', 'clip_negative', 'mutual'))
def _graph(similarities, indices, *, ops, gamma, clip_negative, mutual):
  a = affinities(similarities, gamma, clip_negative)
  if mutual:
    a = jnp.where(knn_graph.mutual(indices), a, 0.0)
  return ops.build(a, indices)


def diffuse(
    features_or_graph,
    seeds,
    *,
    alpha: float = 0.99,
    iterations: int = 20,
    rtol: float = 1e-6,
    k: int = 50,
    gamma: float = 3.0,
    clip_negative: bool = True,
    mutual: bool = False,
    knn_engine: str = 'auto',
    graph_ops: knn_graph.GraphOps | None = None,
) -> jax.Array:
  """Z `[N, C]` solving `(I - alpha W) Z = Y` for `seeds` Y `[N, C]`, on device.

  `features_or_graph`: a `Graph` (`build_graph`), or features `[N, d]` whose graph is built
  here with `k`, `gamma`, `clip_negative`, `mutual`, `knn_engine` and `graph_ops` (which a
  given graph ignores).
  """
  if isinstance(features_or_graph, Graph):
    graph = features_or_graph
  else:
    x = jnp.asarray(features_or_graph, jnp.float32)
    if x.ndim != 2:
      raise ValueError(f'features must be [N, d]; got shape {x.shape}.')
    check_finite(x)
    similarities, indices = knn.knn_search(x, k, engine=knn_engine)
    graph = build_graph(
        similarities,
        indices,
        gamma=gamma,
        clip_negative=clip_negative,
        mutual=mutual,
        ops=graph_ops,
    )
  return _solve(
      graph.data,
      jnp.asarray(seeds, jnp.float32),
      ops=graph.ops,
      alpha=float(alpha),
      iterations=int(iterations),
      rtol=float(rtol),
  )


_solve = jax.jit(solve, static_argnames=('ops', 'iterations'))


# ----------------------------------------------------------------------------
# Query-side re-ranking (CVPR 2017).
# ----------------------------------------------------------------------------
def query_seeds(similarities, indices, num_items: int, gamma: float = 3.0) -> jax.Array:
  """Y `[N, Q]`: column q holds query q's similarities to its nearest database items
  (`similarities`, `indices` `[Q, k_q]`) to the power gamma, negatives at 0."""
  indices = jnp.asarray(indices, jnp.int32)
  values = affinities(similarities, gamma, clip_negative=True)
  columns = jnp.broadcast_to(jnp.arange(indices.shape[0])[:, None], indices.shape)
  return jnp.zeros((num_items, indices.shape[0]), jnp.float32).at[indices, columns].add(values)


def diffusion_ranking(
    graph: Graph,
    similarities,
    indices,
    depth: int,
    *,
    exclude=None,
    gamma: float = 3.0,
    alpha: float = 0.99,
    iterations: int = 20,
    rtol: float = 1e-6,
    queries_per_solve: int = 256,
):
  """The `depth` best database items of each query by diffusion score, on device.

  `graph`: the database's (`build_graph`); `similarities`, `indices` `[Q, k_q]`: each
  query's nearest database items (`knn.search`); `exclude [Q]`: a database item each query
  must not rank (its own, for a database item as query; -1 for none). Queries are solved
  `queries_per_solve` columns at a time (memory: N x that many floats, a few times over).

  Returns `(scores [Q, depth] float32, items [Q, depth] int32)`, best first; equal scores
  (items no diffusion reached score 0) come lower index first.
  """
  similarities = jnp.asarray(similarities, jnp.float32)
  indices = jnp.asarray(indices, jnp.int32)
  num_queries, num_items = indices.shape[0], graph.num_nodes
  if not 1 <= depth <= num_items - (exclude is not None):
    raise ValueError(f'depth={depth} must lie in [1, {num_items - (exclude is not None)}].')
  exclude = jnp.full(num_queries, -1, jnp.int32) if exclude is None else exclude
  exclude = jnp.asarray(exclude, jnp.int32)
  size = max(1, min(queries_per_solve, num_queries))
  pad = -num_queries % size
  # Padded queries (no seeds: z = 0) keep one compiled shape for the last chunk.
  similarities = jnp.pad(similarities, ((0, pad), (0, 0)))
  indices = jnp.pad(indices, ((0, pad), (0, 0)))
  exclude = jnp.pad(exclude, (0, pad), constant_values=-1)
  scores, items = zip(
      *(
          _rank_chunk(
              graph.data,
              similarities[start : start + size],
              indices[start : start + size],
              exclude[start : start + size],
              ops=graph.ops,
              num_items=num_items,
              depth=int(depth),
              gamma=float(gamma),
              alpha=float(alpha),
              iterations=int(iterations),
              rtol=float(rtol),
          )
          for start in range(0, num_queries, size)
      )
  )
  return jnp.concatenate(scores)[:num_queries], jnp.concatenate(items)[:num_queries]


@functools.partial(jax.jit, static_argnames=('ops', 'num_items', 'depth', 'iterations', 'gamma'))
def _rank_chunk(
    graph_data,
    similarities,
    indices,
    exclude,
    *,
    ops,
    num_items,
    depth,
    gamma,
    alpha,
    iterations,
    rtol,
):
  seeds = query_seeds(similarities, indices, num_items, gamma)
  z = solve(graph_data, seeds, ops=ops, alpha=alpha, iterations=iterations, rtol=rtol).T
  z = jnp.where(jnp.arange(num_items)[None, :] == exclude[:, None], -jnp.inf, z)
  return jax.lax.top_k(z, depth)


# ----------------------------------------------------------------------------
# Checks: settings once per run, features on every call.
# ----------------------------------------------------------------------------
def check_settings(
    *,
    config_path: str,
    k: int,
    gamma: float,
    alpha: float,
    cg_iterations: int,
    clip_negative: bool = True,
    knn_engine: str = 'auto',
    num_images: int | None = None,
) -> None:
  """A ValueError naming the field under `config_path` (e.g. 'config.lp') and its allowed
  range for a setting outside it.

  With `num_images` (N, known once the data is read) also k < N, and a warning when k is
  more than LARGE_K_SHARE of N.
  """
  if k != int(k) or k < 1:
    raise ValueError(
        f'{config_path}.k={k} must be an integer in [1, N-1] (N: the images '
        'propagated over; an image is never its own neighbour).'
    )
  if num_images is not None:
    if k >= num_images:
      raise ValueError(
          f'{config_path}.k={k} must be smaller than the {num_images} images: it '
          f'lies in [1, N-1] = [1, {num_images - 1}] (an image is never its own '
          'neighbour).'
      )
    if k > LARGE_K_SHARE * num_images:
      warnings.warn(
          f'{config_path}.k={k} is {k / num_images:.0%} of the {num_images} images: '
          'each list reaches far past its own class and the propagation blurs '
          'the classes together.',
          stacklevel=2,
      )
  if not 0 < alpha < 1:
    raise ValueError(
        f'{config_path}.alpha={alpha} must lie in (0, 1): outside it I - alpha W '
        'is not positive definite and conjugate gradient solves something else.'
    )
  if not gamma > 0:
    raise ValueError(
        f'{config_path}.gamma={gamma} must be positive (affinities are '
        'similarities to the power gamma).'
    )
  if not clip_negative and gamma != int(gamma):
    raise ValueError(
        f'{config_path}.gamma={gamma} must be an integer with '
        f'{config_path}.clip_negative=False: a negative similarity has no real '
        'non-integer power; use an integer gamma or clip_negative=True.'
    )
  if cg_iterations != int(cg_iterations) or cg_iterations < 1:
    raise ValueError(f'{config_path}.cg_iterations={cg_iterations} must be an integer, at least 1.')
  knn.check_engine(knn_engine, f'{config_path}.knn_engine')


def check_finite(x: jax.Array) -> None:
  """A ValueError naming the rows of `x` that hold NaN or inf (one device reduction)."""
  finite = jnp.isfinite(x)
  bad = int(jnp.size(x) - jnp.count_nonzero(finite))
  if bad:
    rows = np.flatnonzero(~np.asarray(finite.all(axis=1)))
    raise ValueError(
        f'features contain {bad} NaN/inf values in {rows.size} rows (first: row '
        f'{rows[0]}); the encoder diverged or its input was not normalised.'
    )
