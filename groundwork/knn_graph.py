"""The propagation graph W = D^-1/2 (A + A^T) D^-1/2 on kNN edges, as an O(Nk) operator.

A `[N, N]` holds each image's affinities to its k neighbours: `values [N, k]` at columns
`indices [N, k]`. W has no diagonal (an edge from a node to itself is dropped, as the
reference's `normalize_connection_graph` subtracts it), a mutual pair gets a_ij + a_ji, and
D is the degree of A + A^T, a node of degree 0 (or below, with unclipped negative affinities)
getting D^-1/2 = 0 as the reference maps its inf and NaN to 0.

A graph is used through a `GraphOps`: `build(values, indices) -> graph` (a pytree of device
arrays) and `matvec(graph, p) -> W @ p` for `p [N, C]`, both traceable inside `jax.jit`.
`graph_ops()` picks one, once, outside any traced code:

- `COO`, the default on every platform: pure JAX, exact. With B = D^-1/2 A D^-1/2 kept as
  the kNN edges themselves (row i's k targets and weights), W = B + B^T, and
  `W @ p = B @ p + B^T @ p`: B @ p sums each row's k slots, B^T @ p is one
  `jax.ops.segment_sum` of the edges into their targets, as is the column half of D.
- the CPU package's row graph (`groundwork_cpu.row_graph`, cpu_kernels/), where
  `groundwork.backend.cpu_kernels()` has it: the same W laid out in rows by one native call,
  with a native product on every core.

Speed of both on the CPU (the COO graph has not been measured on a GPU):
docs/performance.md, "Label propagation".

`mutual(indices)` marks the edges whose target lists the source too: zeroing the other
affinities gives the mutual kNN graph of diffusion retrieval (Iscen et al., CVPR 2017), whose
A is symmetric, so the same W (A + A^T = 2A normalises to D_A^-1/2 A D_A^-1/2).
"""

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import backend


class GraphOps(NamedTuple):
  """How W is built and applied; hashable, so it can be a static argument of `jax.jit`."""

  build: Callable[[jax.Array, jax.Array], Any]  # (values [N, k], indices [N, k]) -> graph.
  matvec: Callable[[Any, jax.Array], jax.Array]  # (graph, p [N, C]) -> W @ p.


class CooGraph(NamedTuple):
  """W = B + B^T, B's edges i -> indices[i, m] with weights D_i^-1/2 a_ij D_j^-1/2."""

  indices: jax.Array  # [N, k] int32.
  weight: jax.Array  # [N, k] float32; 0 on an edge from a node to itself.
  degree: jax.Array  # [N] float32: row sums of A + A^T.


def coo_build(values: jax.Array, indices: jax.Array) -> CooGraph:
  """W from the affinities `values [N, k]` of the kNN lists `indices [N, k]`."""
  values = jnp.asarray(values, jnp.float32)
  indices = jnp.asarray(indices, jnp.int32)
  n = values.shape[0]
  a = jnp.where(indices == jnp.arange(n, dtype=jnp.int32)[:, None], 0.0, values)
  degree = a.sum(axis=1) + jax.ops.segment_sum(a.reshape(-1), indices.reshape(-1), n)
  scale = jnp.where(degree > 0, jax.lax.rsqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
  return CooGraph(indices, scale[:, None] * a * scale[indices], degree)


def coo_matvec(graph: CooGraph, p: jax.Array) -> jax.Array:
  """`W @ p = B @ p + B^T @ p` for `p [N, C]`."""
  n, k = graph.weight.shape
  # One slot at a time: XLA fuses the sum into a single loop over rows, where a gather of
  # [N, k, C] rows would be materialised first, and a segment_sum would scatter.
  forward = graph.weight[:, 0, None] * p[graph.indices[:, 0]]
  for m in range(1, k):
    forward = forward + graph.weight[:, m, None] * p[graph.indices[:, m]]
  edges = (graph.weight[:, :, None] * p[:, None, :]).reshape(n * k, p.shape[1])
  return forward + jax.ops.segment_sum(edges, graph.indices.reshape(-1), n)


COO = GraphOps(coo_build, coo_matvec)
KINDS = ('auto', 'coo', 'rows')


def graph_ops(kind: str = 'auto') -> GraphOps:
  """The graph operator: 'coo' (pure JAX), 'rows' (the CPU package's row graph, or a
  RuntimeError saying why it is unavailable), or 'auto': 'rows' where
  `backend.cpu_kernels()` has the package, else 'coo'."""
  if kind not in KINDS:
    raise ValueError(f'graph kind {kind!r} is not one of {KINDS}.')
  if kind == 'coo':
    return COO
  kernels = backend.require_cpu_kernels() if kind == 'rows' else backend.cpu_kernels()
  if kernels is None:
    return COO
  rows = importlib.import_module(f'{kernels.__name__}.row_graph')
  return GraphOps(rows.build, rows.matvec)


def mutual(indices: jax.Array, rows_per_step: int = 2048) -> jax.Array:
  """`[N, k]` bool: whether row `indices[i, m]` lists i among its own k, for every edge.

  `rows_per_step` bounds the `[rows, k, k]` comparison held at once.
  """
  indices = jnp.asarray(indices, jnp.int32)
  n = indices.shape[0]

  def listed_back(args):
    row, targets = args
    return jnp.any(indices[targets] == row, axis=-1)

  return jax.lax.map(
      listed_back, (jnp.arange(n, dtype=jnp.int32), indices), batch_size=min(rows_per_step, n)
  )


def dense(graph, n: int, ops: GraphOps = COO) -> np.ndarray:
  """W of `n` nodes as a dense NumPy matrix (for tests and small problems): W @ I."""
  return np.asarray(ops.matvec(graph, jnp.eye(n, dtype=jnp.float32)))
