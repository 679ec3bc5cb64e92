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

Two forms of these rows, picked by platform (`structure`):
- on GPU/TPU, gather tables (`Graph`): sorting the entries into rows is integer
  bookkeeping, done once per graph with NumPy (one sort of the 2Nk directed
  readings, ~10x faster there than XLA's CPU sort); the tables and every number
  are computed on device;
- on CPU, where ssl/knn_graph_cpu.cc builds, plain rows (`RowGraph`) laid out,
  weighted and normalised by one native call from the kNN lists, and a native
  `W @ p` on every core. At N = 50,000, k = 50, C = 10 (2-core machine) the
  graph took ~27 ms instead of 87 + 28 ms (NumPy layout + tables) and a product
  2.8 ms instead of 5.3. Entries within a row are in another order than the
  layout's; W is the same (tests/test_label_propagation.py).
"""
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import native

TILE = 16  # Entries per tile of a long row.
MIN_TILES = 256  # Tile capacity is at least this.
CAPACITY_STEPS = 8  # Capacities per doubling: padding stays under 1/8 of the tiles.


# W's CPU kernels: the rows of a `RowGraph` from the kNN lists, and `W @ p` over them.
LIBRARY = native.FfiLibrary(Path(__file__).with_name('knn_graph_cpu.cc'),
                            {'semisup_knn_graph': 'SemisupKnnGraph',
                             'semisup_row_product': 'SemisupRowProduct'},
                            'the CPU kernels of the propagation graph')


def report() -> bool:
  """For `make install`: builds the CPU kernels, or says why not and what that costs."""
  return LIBRARY.report('label propagation keeps its graph in XLA gather tables (~2x slower '
                        'on CPU)')


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


class RowGraph(NamedTuple):
  """W on CPU (knn_graph_cpu.cc): `W @ p = sum_e weight[e] p[column[e]]` over the entries
  `row_start[i] .. row_start[i] + row_length[i] - 1` of each row i."""
  row_start: jax.Array  # [N] int32.
  row_length: jax.Array  # [N] int32.
  column: jax.Array  # [2E + 1] int32; N past the entries.
  weight: jax.Array  # [2E + 1] float32: D_i^-1/2 (a_ij + a_ji) D_j^-1/2; 0 past the entries.
  degree: jax.Array  # [N] float32: row sums of A + A^T.


def row_kernels_enabled() -> bool:
  """Whether W is a `RowGraph` (CPU kernels) here: on CPU, where the kernels build."""
  return jax.default_backend() == 'cpu' and LIBRARY.available()


def structure(indices: np.ndarray) -> Layout | jax.Array:
  """What `build` needs besides the affinities: the kNN lists `indices [N, k]` themselves
  where the CPU kernels lay W out inside `build`, else their host `Layout`."""
  if row_kernels_enabled():
    return jnp.asarray(indices, jnp.int32)
  return layout(indices)


def layout(indices: np.ndarray) -> Layout:
  """Sort W's entries for the kNN lists `indices [N, k]` into rows (NumPy, host)."""
  indices = np.asarray(indices, np.int32)
  n, k = indices.shape
  num_edges = n * k
  # Reading q < E is edge q forwards (row i, column j); q >= E is edge q - E
  # backwards (row j, column i). Sorted by (row, column), rows are contiguous
  # and a mutual pair's two readings are adjacent, the forwards one first.
  position, reading, column_bits = _sorted_readings(indices)
  new = np.empty(reading.size + 1, bool)
  new[0] = new[-1] = True
  np.not_equal(position[1:], position[:-1], out=new[1:-1])
  bounds = np.flatnonzero(new)  # Each entry's first reading, then one past the last.
  size = bounds.size - 1
  position = np.take(position, bounds[:-1])
  # Filled up to `size` in place and padded once: these are 2E + 1 long.
  column = np.empty(2 * num_edges + 1, np.int32)
  edge_out = np.empty_like(column)
  edge_in = np.empty_like(column)
  column[size:], edge_out[size:], edge_in[size:] = n, num_edges, num_edges
  np.bitwise_and(position, np.uint64((1 << column_bits) - 1), out=column[:size],
                 casting='unsafe')
  # An entry's forwards edge is its first reading if that is forwards; its
  # backwards edge is its last reading if that is backwards. Readings of the
  # wrong kind map to E: with the minimum directly, and through unsigned
  # wrap-around of q - E < 0 for the backwards one.
  out, into = edge_out[:size], edge_in[:size]
  np.take(reading, bounds[:-1], out=out)
  np.minimum(out, num_edges, out=out)
  bounds -= 1  # In place: one past an entry's last reading becomes its last.
  np.take(reading, bounds[1:], out=into)
  into -= num_edges
  np.minimum(into.view(np.uint32), num_edges, out=into.view(np.uint32))

  # Entries are sorted by position (row << column_bits | column): each row starts
  # where the positions reach its own.
  row_start = np.searchsorted(position, np.arange(n, dtype=np.uint64) << np.uint64(column_bits))
  degree = np.diff(row_start, append=size)
  first = first_width(k)
  tiles_of = -(-np.maximum(degree - first, 0) // TILE)
  used = int(tiles_of.sum())
  capacity = tile_capacity(used)
  tile_row = np.full(capacity, n - 1, np.int32)
  tile_row[:used] = np.repeat(np.arange(n, dtype=np.int32), tiles_of)
  tile_start = np.full(capacity, 2 * num_edges, np.int32)
  tile_start[:used] = (row_start + first)[tile_row[:used]] + TILE * (
      np.arange(used) - (np.cumsum(tiles_of) - tiles_of)[tile_row[:used]])
  return Layout(column, edge_out, edge_in, row_start.astype(np.int32), degree.astype(np.int32),
                tile_start, tile_row)


def tile_capacity(used: int) -> int:
  """Tiles to allocate for `used`: one of CAPACITY_STEPS sizes per doubling.

  A few sizes only, so a new graph of the same size (the next epoch's) usually
  reuses the compiled propagation; finer than powers of two, because empty tiles
  cost gathers in every CG step (a power of two left 41% of them empty at C=100).
  """
  need = max(used, MIN_TILES)
  shift = max(0, (need - 1).bit_length() - CAPACITY_STEPS.bit_length())
  return -(-need >> shift) << shift


def _sorted_readings(indices: np.ndarray, pack: bool = True):
  """Readings 0..2E-1 sorted by (row, column, reading), with their positions.

  A reading's position is `row << column_bits | column` (returned with
  `column_bits`), so row and column come back by shift and mask. One sort of
  64-bit keys with the reading id packed below the position, or, when N is too
  large for that or `pack` is False, a stable argsort (a few times slower).
  """
  n, k = indices.shape
  num_edges = n * k
  count = 2 * num_edges
  column_bits = max(1, int(n - 1).bit_length())
  reading_bits = int(count - 1).bit_length()
  packed = pack and 2 * column_bits + reading_bits <= 64
  low = reading_bits if packed else 0  # Where the position starts in a key.
  # Key fields do not overlap, so they are added, each as a broadcast over rows
  # or slots of `indices`: no full-size temporaries.
  row, slot = np.arange(n, dtype=np.uint64)[:, None], np.arange(k, dtype=np.uint64)
  key = np.empty((2, n, k), np.uint64)
  # Forwards, the row is the source i and the column the target; backwards, swapped.
  shifts = ((low + column_bits, low), (low, low + column_bits))
  for half, (source_shift, target_shift) in enumerate(shifts):
    part = key[half]
    np.copyto(part, indices, casting='unsafe')
    part <<= np.uint64(target_shift)
    rows = row << np.uint64(source_shift)
    if packed:  # Plus the reading id half * E + i * k + slot.
      rows += row * np.uint64(k) + np.uint64(half * num_edges)
      part += slot
    part += rows
  key = key.reshape(-1)
  index_type = np.int32 if count < 2**31 else np.int64
  if packed:
    key.sort()
    reading = np.empty(count, index_type)
    np.bitwise_and(key, np.uint64((1 << reading_bits) - 1), out=reading, casting='unsafe')
    key >>= np.uint64(reading_bits)
    return key, reading, column_bits
  reading = np.argsort(key, kind='stable').astype(index_type)
  return key[reading], reading, column_bits


def build(values: jax.Array, structure: Layout | jax.Array) -> Graph | RowGraph:
  """The normalised graph from the affinities `values [N, k]` of the kNN edges and
  `structure(indices)`: gather tables from a `Layout`, rows from the kNN lists."""
  if isinstance(structure, Layout):
    return build_tables(values, structure)
  return build_rows(values, structure)


def build_rows(values: jax.Array, indices: jax.Array) -> RowGraph:
  """W for the CPU kernels from the kNN lists `indices [N, k]`, each row's k distinct (as
  `knn_search` returns them: with repeats the tables count an edge once, here once each)."""
  values = jnp.asarray(values, jnp.float32)
  n, k = values.shape
  LIBRARY.require()
  rows = jax.ShapeDtypeStruct((n,), jnp.int32)
  entries = (2 * n * k + 1,)
  return RowGraph(*jax.ffi.ffi_call('semisup_knn_graph', (
      rows, rows, jax.ShapeDtypeStruct(entries, jnp.int32),
      jax.ShapeDtypeStruct(entries, jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32)))(
          jnp.asarray(indices, jnp.int32), values))


def build_tables(values: jax.Array, layout: Layout) -> Graph:
  """W as gather tables, from the host `layout` of the kNN lists (any platform)."""
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


def matvec(graph: Graph | RowGraph, p: jax.Array) -> jax.Array:
  """`W @ p` for `p [N, C]`."""
  if isinstance(graph, RowGraph):
    LIBRARY.require()
    return jax.ffi.ffi_call('semisup_row_product', jax.ShapeDtypeStruct(p.shape, jnp.float32))(
        graph.row_start, graph.row_length, graph.column, graph.weight, p.astype(jnp.float32))
  padded = jnp.concatenate([p, jnp.zeros((1, p.shape[1]), p.dtype)])
  out = _gather_sum(graph.weight, graph.column, padded)
  tiles = _gather_sum(graph.tile_weight, graph.tile_column, padded)
  return out.at[graph.tile_row].add(tiles, indices_are_sorted=True)


def dense(graph: Graph | RowGraph) -> np.ndarray:
  """W as a dense NumPy matrix (for tests and small problems): W @ I."""
  return np.asarray(matvec(graph, jnp.eye(graph.degree.shape[0], dtype=jnp.float32)))
