"""The propagation graph W = D^-1/2 (A + A^T) D^-1/2 on kNN edges, as an O(Nk) operator.

A `[N, N]` holds each image's affinities to its k neighbours: `values [N, k]`
at columns `indices [N, k]`. W has no diagonal (self is never a neighbour),
and D is the degree of A + A^T, a node of degree 0 getting D^-1/2 = 0 (as the
reference's `normalize_connection_graph`).

W is stored row by row, each entry once: W_ij = a_ij + a_ji, so a mutual pair
(i and j in each other's lists: 40% of the edges of the benchmark graphs) costs
one gather instead of two. `W @ p` is then a gather-and-sum over each row. XLA
on CPU scatters one update at a time, 6-9x slower per value than it gathers, so
the rows are laid out for gathers: every row's first `first_width(k)` entries
(a row has at least k) fill one `[N, first]` table; the rest of a long row
(hubs of a kNN graph have hundreds or thousands) fill tiles of `TILE` entries
of that row, whose sums are scattered into place, one update per tile. Empty
slots point at a zero row of p with weight 0.

Sorting the entries into rows is integer bookkeeping, done once per graph with
NumPy (one sort of the 2Nk directed readings, ~10x faster there than XLA's CPU
sort); the tables and every number are computed on device.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TILE = 16  # Entries per tile of a long row.
MIN_TILES = 256  # Tile capacity is a power of two times this.


def first_width(k: int) -> int:
  """Entries per row in the first table: k, plus room for a few in-edges."""
  return k + max(4, k // 8)


class Layout(NamedTuple):
  """W's entries row by row (NumPy, host), for `build` to spread into tables.

  Entry u (u < number of entries; the rest up to 2E, and the last, are padding)
  lies in row `r` with `row_start[r] <= u < row_start[r] + degree[r]`; `edge_*`
  name the kNN edges `e = i * k + m` (i -> indices[i, m]) whose affinities add
  up to it, E = N * k meaning none; padding has column N and no edges.
  """
  column: np.ndarray  # [2E + 1] int32.
  edge_out: np.ndarray  # [2E + 1] int32: the edge row -> column.
  edge_in: np.ndarray  # [2E + 1] int32: the edge column -> row.
  row_start: np.ndarray  # [N] int32.
  degree: np.ndarray  # [N] int32: entries in the row.
  tile_start: np.ndarray  # [T] int32: first entry of each tile of a long row; 2E for padding.
  tile_row: np.ndarray  # [T] int32, non-decreasing: the row each tile sums into.


class Graph(NamedTuple):
  """W on device: `W @ p = sum_j weight[:, j] p[column[:, j]] + tiles`."""
  column: jax.Array  # [N, F] int32; N means "no entry" (a zero row of p).
  weight: jax.Array  # [N, F] float32.
  tile_column: jax.Array  # [T, TILE] int32.
  tile_weight: jax.Array  # [T, TILE] float32.
  tile_row: jax.Array  # [T] int32.
  degree: jax.Array  # [N] float32: row sums of A + A^T.


def layout(indices: np.ndarray) -> Layout:
  """Sort W's entries for the kNN lists `indices [N, k]` into rows (NumPy, host)."""
  indices = np.asarray(indices, np.int32)
  n, k = indices.shape
  num_edges = n * k
  # Reading q < E is edge q forwards (row i, column j); q >= E is edge q - E
  # backwards (row j, column i). Sorted by (row, column), rows are contiguous
  # and a mutual pair's two readings are adjacent, the forwards one first.
  reading, new = _sorted_readings(indices)
  # For a pair's first reading, the edge of its second (backwards) reading; else E.
  partner = np.full(reading.size, num_edges, reading.dtype)
  second = np.flatnonzero(~new)
  partner[second - 1] = reading[second] - num_edges
  reading, partner = reading[new], partner[new]  # One per entry of W, by its first reading.
  size = reading.size
  forwards = reading < num_edges
  edge = np.where(forwards, reading, reading - num_edges)
  source, target = edge // k, indices.reshape(-1)[edge]
  entry_row = np.where(forwards, source, target)
  column = np.full(2 * num_edges + 1, n, np.int32)
  edge_out = np.full(2 * num_edges + 1, num_edges, np.int32)
  edge_in = np.full(2 * num_edges + 1, num_edges, np.int32)
  column[:size] = np.where(forwards, target, source)
  edge_out[:size] = np.where(forwards, edge, num_edges)
  edge_in[:size] = np.where(forwards, partner, edge)

  degree = np.bincount(entry_row, minlength=n)
  row_start = np.cumsum(degree) - degree
  first = first_width(k)
  tiles_of = -(-np.maximum(degree - first, 0) // TILE)
  used = int(tiles_of.sum())
  # Tile capacity: a power of two, so a new graph of the same size recompiles
  # the propagation only when its long rows outgrow the last one.
  capacity = MIN_TILES * (1 << max(0, -(-used // MIN_TILES) - 1).bit_length())
  tile_row = np.full(capacity, n - 1, np.int32)
  tile_row[:used] = np.repeat(np.arange(n, dtype=np.int32), tiles_of)
  tile_start = np.full(capacity, 2 * num_edges, np.int32)
  tile_start[:used] = (row_start + first)[tile_row[:used]] + TILE * (
      np.arange(used) - (np.cumsum(tiles_of) - tiles_of)[tile_row[:used]])
  return Layout(column, edge_out, edge_in, row_start.astype(np.int32), degree.astype(np.int32),
                tile_start, tile_row)


def _sorted_readings(indices: np.ndarray, pack: bool = True):
  """Readings 0..2E-1 sorted by (row, column, reading), and whether each starts a new entry.

  One sort of 64-bit keys with the reading id packed below the position
  (row * N + column), or, when N is too large for that or `pack` is False, a
  stable argsort (a few times slower).
  """
  n, k = indices.shape
  count = 2 * n * k
  target = indices.reshape(-1).astype(np.uint64)
  source = np.repeat(np.arange(n, dtype=np.uint64), k)
  position = np.empty(count, np.uint64)
  np.multiply(source, np.uint64(n), out=position[:count // 2])
  position[:count // 2] += target
  np.multiply(target, np.uint64(n), out=position[count // 2:])
  position[count // 2:] += source
  bits = int(count - 1).bit_length()
  if not pack or (n * n) >> (64 - bits):
    reading = np.argsort(position, kind='stable')
    position = position[reading]
  else:
    position <<= np.uint64(bits)
    position |= np.arange(count, dtype=np.uint64)
    position.sort()
    reading = position & np.uint64((1 << bits) - 1)
    position >>= np.uint64(bits)
  new = np.empty(count, bool)
  new[0] = True
  np.not_equal(position[1:], position[:-1], out=new[1:])
  return reading.astype(np.int32 if count < 2**31 else np.int64), new


def build(values: jax.Array, layout: Layout) -> Graph:
  """The normalised graph from the affinities `values [N, k]` of the kNN edges."""
  values = jnp.asarray(values, jnp.float32)
  n, k = values.shape
  affinity = jnp.concatenate([values.reshape(-1), jnp.zeros((1,), jnp.float32)])
  padding = 2 * n * k  # The last entry: column N, no edges.
  row_start = jnp.asarray(layout.row_start)
  row_end = row_start + jnp.asarray(layout.degree)

  def table(start, end, width):  # Columns and a_ij + a_ji of `width` entries from `start`.
    entry = start[:, None] + jnp.arange(width)[None, :]
    entry = jnp.where(entry < end[:, None], entry, padding)
    edge_out, edge_in = jnp.asarray(layout.edge_out)[entry], jnp.asarray(layout.edge_in)[entry]
    return jnp.asarray(layout.column)[entry], affinity[edge_out] + affinity[edge_in]

  first = first_width(k)
  column, pair = table(row_start, jnp.minimum(row_end, row_start + first), first)
  tile_row = jnp.asarray(layout.tile_row)
  tile_column, tile_pair = table(jnp.asarray(layout.tile_start), row_end[tile_row], TILE)
  degree = pair.sum(axis=1).at[tile_row].add(tile_pair.sum(axis=1), indices_are_sorted=True)
  # D^-1/2 with degree-0 nodes at 0 (the reference maps the inf and NaN to 0).
  scale = jnp.where(degree > 0, jax.lax.rsqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
  column_scale = jnp.concatenate([scale, jnp.zeros((1,), jnp.float32)])
  weight = scale[:, None] * pair * column_scale[column]
  tile_weight = scale[tile_row][:, None] * tile_pair * column_scale[tile_column]
  return Graph(column, weight, tile_column, tile_weight, tile_row, degree)


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
  tiles = _gather_sum(graph.tile_weight, graph.tile_column, padded)
  return out.at[graph.tile_row].add(tiles, indices_are_sorted=True)


def dense(graph: Graph) -> np.ndarray:
  """W as a dense NumPy matrix (for tests and small problems)."""
  n = graph.degree.shape[0]
  return np.asarray(jax.vmap(lambda e: matvec(graph, e[:, None])[:, 0])(jnp.eye(n))).T
