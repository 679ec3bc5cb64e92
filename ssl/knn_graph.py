"""The propagation graph W = D^-1/2 (A + A^T) D^-1/2 on kNN edges, as an O(Nk) operator.

A `[N, N]` holds each image's affinities to its k neighbours: `values [N, k]`
at columns `indices [N, k]`. W has no diagonal (self is never a neighbour),
and D is the degree of A + A^T, a node of degree 0 getting D^-1/2 = 0 (as the
reference's `normalize_connection_graph`).

W is stored row by row, each entry once: W_ij = a_ij + a_ji, so a mutual pair
(i and j in each other's lists, about a third of the pairs at k = 50) costs one
gather instead of two. `W @ p` is then a gather-and-sum over each row. XLA on
CPU scatters one update at a time, roughly ten times slower than it gathers, so
the rows are laid out for gathers: every row's first `first_width(k)` entries
(a row has at least k) fill one `[N, first]` table; the rest of a long row
(hubs of a kNN graph have hundreds or thousands) fill tiles of `TILE` entries
of that row, whose sums are scattered into place, one update per tile.

Which entry goes where is integer bookkeeping, done once per graph with NumPy
(one sort of the 2Nk directed entries, ~10x faster there than XLA's CPU sort);
every number is computed on device.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TILE = 16  # Entries per tile of a long row.
CHUNK = 2048  # Tiles per step of the scatter loop; only filled chunks run.


def first_width(k: int) -> int:
  """Entries per row in the first table: k, plus room for a few in-edges."""
  return k + max(4, k // 8)


class Layout(NamedTuple):
  """Where each entry of W sits; `edge_*` name the kNN edges `e = i * k + m`
  (i -> indices[i, m]) whose affinities add up to it, N * k meaning none."""
  column: np.ndarray  # [N, F] int32: the entry's column, N for an empty slot.
  edge_out: np.ndarray  # [N, F] int32: edge row -> column.
  edge_in: np.ndarray  # [N, F] int32: edge column -> row.
  tile_column: np.ndarray  # [T, TILE] int32, and so on for the tiles of long rows.
  tile_edge_out: np.ndarray  # [T, TILE] int32.
  tile_edge_in: np.ndarray  # [T, TILE] int32.
  tile_row: np.ndarray  # [T] int32, non-decreasing: the row each tile sums into.
  num_chunks: int  # Chunks of CHUNK tiles that hold any real tile.


class Graph(NamedTuple):
  """W on device: `W @ p = sum_j weight[:, j] p[column[:, j]] + tiles`."""
  column: jax.Array  # [N, F] int32; N means "no entry" (a zero row of p).
  weight: jax.Array  # [N, F] float32.
  tile_column: jax.Array  # [T, TILE] int32.
  tile_weight: jax.Array  # [T, TILE] float32.
  tile_row: jax.Array  # [T] int32.
  num_chunks: jax.Array  # int32 scalar.
  degree: jax.Array  # [N] float32: row sums of A + A^T.


def layout(indices: np.ndarray) -> Layout:
  """Lay out W's entries for the kNN lists `indices [N, k]` (NumPy, host)."""
  indices = np.asarray(indices)
  n, k = indices.shape
  num_edges = n * k
  first = first_width(k)
  # Entry id q < E is edge q read forwards (row i, column j); q >= E is edge
  # q - E read backwards (row j, column i). Sorting by (row, column) puts the
  # two readings of a mutual pair next to each other.
  row = np.repeat(np.arange(n, dtype=np.uint64), k)
  col = indices.reshape(-1).astype(np.uint64)
  position = np.concatenate([row * np.uint64(n) + col, col * np.uint64(n) + row])
  entry = _sort_with_ids(position, 2 * num_edges)
  position = position[entry]
  new = np.ones(entry.size, bool)
  new[1:] = position[1:] != position[:-1]
  unique = np.cumsum(new) - 1
  size = int(unique[-1]) + 1
  edge_out = np.full(size, num_edges, np.int32)
  edge_in = np.full(size, num_edges, np.int32)
  forwards = entry < num_edges
  edge_out[unique[forwards]] = entry[forwards]
  edge_in[unique[~forwards]] = entry[~forwards] - num_edges
  position = position[new]
  entry_row = (position // np.uint64(n)).astype(np.int64)
  entry_col = (position % np.uint64(n)).astype(np.int32)

  degree = np.bincount(entry_row, minlength=n)
  rank = np.arange(size) - (np.cumsum(degree) - degree)[entry_row]  # Place in its row.
  tiles_of = -(-np.maximum(degree - first, 0) // TILE)
  tile_start = np.cumsum(tiles_of) - tiles_of
  # A row of d > F entries has ceil((d - F) / TILE) <= d / min(F + 1, TILE) tiles
  # and rows hold 2E entries at most; a static capacity lets one compiled
  # program serve every graph of this size.
  capacity = -(-(2 * num_edges // min(first + 1, TILE) + 1) // CHUNK) * CHUNK
  # The first table and the tiles as one flat buffer: [N, F] then [capacity, TILE].
  slot = np.where(rank < first, entry_row * first + rank,
                  n * first + tile_start[entry_row] * TILE + rank - first)
  tables = []
  for value, empty in ((entry_col, n), (edge_out, num_edges), (edge_in, num_edges)):
    flat = np.full(n * first + capacity * TILE, empty, np.int32)
    flat[slot] = value
    tables.append((flat[:n * first].reshape(n, first), flat[n * first:].reshape(capacity, TILE)))
  used = int(tiles_of.sum())
  tile_row = np.full((capacity,), n - 1, np.int32)
  tile_row[:used] = np.repeat(np.arange(n, dtype=np.int32), tiles_of)
  (column, tile_column), (out_, tile_out), (in_, tile_in) = tables
  return Layout(column, out_, in_, tile_column, tile_out, tile_in, tile_row, -(-used // CHUNK))


def _sort_with_ids(keys: np.ndarray, count: int) -> np.ndarray:
  """The permutation sorting `keys` (uint64), ties by id; one packed sort when it fits."""
  id_bits = max(int(count - 1).bit_length(), 1)
  if int(keys.max()) < (1 << (64 - id_bits)):
    packed = np.sort((keys << np.uint64(id_bits)) | np.arange(count, dtype=np.uint64))
    return (packed & np.uint64((1 << id_bits) - 1)).astype(np.int64)
  return np.argsort(keys, kind='stable')


def build(values: jax.Array, layout: Layout, indices: jax.Array) -> Graph:
  """The normalised graph from affinities `values [N, k]` at `indices [N, k]`."""
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  degree = values.sum(axis=1) + jax.ops.segment_sum(
      values.reshape(-1), jnp.asarray(indices, jnp.int32).reshape(-1), n)
  # D^-1/2 with degree-0 nodes at 0 (the reference maps the inf and NaN to 0).
  scale = jnp.where(degree > 0, jax.lax.rsqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
  affinity = jnp.concatenate([values.reshape(-1), jnp.zeros((1,), jnp.float32)])
  padded_scale = jnp.concatenate([scale, jnp.zeros((1,), jnp.float32)])

  def weight(rows, column, edge_out, edge_in):
    return rows * (affinity[edge_out] + affinity[edge_in]) * padded_scale[column]

  tile_row = jnp.asarray(layout.tile_row)
  return Graph(
      column=jnp.asarray(layout.column),
      weight=weight(scale[:, None], layout.column, layout.edge_out, layout.edge_in),
      tile_column=jnp.asarray(layout.tile_column),
      tile_weight=weight(scale[tile_row][:, None], layout.tile_column, layout.tile_edge_out,
                         layout.tile_edge_in),
      tile_row=tile_row,
      num_chunks=jnp.asarray(layout.num_chunks, jnp.int32),
      degree=degree)


def _gather_sum(weight: jax.Array, column: jax.Array, p: jax.Array) -> jax.Array:
  # One slot at a time: XLA fuses the unrolled sum into a single loop over
  # rows, where an einsum over [rows, slots, C] would materialise the gather.
  out = weight[:, 0:1] * p[column[:, 0]]
  for j in range(1, column.shape[1]):
    out = out + weight[:, j:j + 1] * p[column[:, j]]
  return out


def matvec(graph: Graph, p: jax.Array) -> jax.Array:
  """`W @ p` for `p [N, C]`."""
  padded = jnp.concatenate([p, jnp.zeros((1, p.shape[1]), p.dtype)])
  out = _gather_sum(graph.weight, graph.column, padded)

  def long_rows(c, out):
    start = (c * CHUNK, 0)
    column = jax.lax.dynamic_slice(graph.tile_column, start, (CHUNK, TILE))
    weight = jax.lax.dynamic_slice(graph.tile_weight, start, (CHUNK, TILE))
    row = jax.lax.dynamic_slice(graph.tile_row, start[:1], (CHUNK,))
    return out.at[row].add(_gather_sum(weight, column, padded), indices_are_sorted=True)

  return jax.lax.fori_loop(0, graph.num_chunks, long_rows, out)


def dense(graph: Graph) -> np.ndarray:
  """W as a dense NumPy matrix (for tests and small problems)."""
  n = graph.degree.shape[0]
  return np.asarray(jax.vmap(lambda e: matvec(graph, e[:, None])[:, 0])(jnp.eye(n))).T
