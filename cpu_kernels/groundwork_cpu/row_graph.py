"""The propagation graph W = D^-1/2 (A + A^T) D^-1/2 on kNN edges, laid out row by row on CPU.

A [N, N] holds each node's affinities to its k neighbours: `values [N, k]` at columns
`indices [N, k]`. D is the degree of A + A^T, and a node of degree 0 gets D^-1/2 = 0 (as the
reference's `normalize_connection_graph` maps its inf to 0), so its row and column of W are 0.

W is stored row by row, each entry once: W_ij = D_i^-1/2 (a_ij + a_ji) D_j^-1/2, so a mutual
pair (i and j in each other's lists) is one entry, and a column listed twice in a row adds up.
`build` lays the rows out, weights and normalises them in one native call from the kNN lists
(csrc/row_graph.cc: each row's in-edges counted into place, no sort), and `matvec` is a
native product over the rows on every core; both are XLA FFI calls, so both trace under
`jax.jit`. NOTES.md has their times against the NumPy layout and XLA's gathers.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from groundwork_cpu import _native

LIBRARY = _native.Library(
    'row_graph',
    'propagation graph (row layout)',
    {
        'groundwork_cpu_row_graph': 'GroundworkCpuRowGraph',
        'groundwork_cpu_row_product': 'GroundworkCpuRowProduct',
    },
)
_native.load(LIBRARY)


class RowGraph(NamedTuple):
  """W: `W @ p = sum_e weight[e] p[column[e]]` over the entries `row_start[i] ..
  row_start[i] + row_length[i] - 1` of each row i. Room is kept for 2Nk entries (every edge
  read from both ends) plus one; past the entries, columns are N and weights 0."""

  row_start: jax.Array  # [N] int32.
  row_length: jax.Array  # [N] int32.
  column: jax.Array  # [2Nk + 1] int32.
  weight: jax.Array  # [2Nk + 1] float32: D_i^-1/2 (a_ij + a_ji) D_j^-1/2.
  degree: jax.Array  # [N] float32: row sums of A + A^T.


def build(values: jax.Array, indices: jax.Array) -> RowGraph:
  """W from the affinities `values [N, k]` of the kNN edges i -> `indices[i, m]` (in [0, N))."""
  values = jnp.asarray(values, jnp.float32)
  indices = jnp.asarray(indices, jnp.int32)
  if values.ndim != 2 or values.shape != indices.shape:
    raise ValueError(
        f'values and indices must both be [N, k]; got {values.shape} and ' f'{indices.shape}.'
    )
  n, k = values.shape
  rows = jax.ShapeDtypeStruct((n,), jnp.int32)
  entries = (2 * n * k + 1,)
  return RowGraph(
      *jax.ffi.ffi_call(
          'groundwork_cpu_row_graph',
          (
              rows,
              rows,
              jax.ShapeDtypeStruct(entries, jnp.int32),
              jax.ShapeDtypeStruct(entries, jnp.float32),
              jax.ShapeDtypeStruct((n,), jnp.float32),
          ),
      )(indices, values)
  )


def matvec(graph: RowGraph, p: jax.Array) -> jax.Array:
  """W @ p for `p` [N, C] (or [N]), in float32."""
  p = jnp.asarray(p, jnp.float32)
  if p.ndim == 1:
    return matvec(graph, p[:, None])[:, 0]
  n = graph.row_start.shape[0]
  if p.ndim != 2 or p.shape[0] != n:
    raise ValueError(f'p must be [N, C] with N={n}; got shape {p.shape}.')
  return jax.ffi.ffi_call('groundwork_cpu_row_product', jax.ShapeDtypeStruct(p.shape, jnp.float32))(
      graph.row_start, graph.row_length, graph.column, graph.weight, p
  )


def degree(graph: RowGraph) -> jax.Array:
  """[N] row sums of A + A^T (before normalisation)."""
  return graph.degree
