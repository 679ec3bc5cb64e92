"""row_graph: W = D^-1/2 (A + A^T) D^-1/2 of kNN lists, against a dense NumPy W."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groundwork_cpu import row_graph


def _dense_w(values, indices):
  """The dense W of the kNN lists, D^-1/2 = 0 at degree 0; and the degrees."""
  n, k = values.shape
  a = np.zeros((n, n))
  np.add.at(a, (np.repeat(np.arange(n), k), indices.ravel()), values.ravel())
  w = a + a.T
  degree = w.sum(1)
  scale = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0)
  return scale[:, None] * w * scale[None], degree


def _dense(graph):
  return np.asarray(row_graph.matvec(graph, jnp.eye(graph.degree.shape[0], dtype=jnp.float32)))


def _random_knn_lists(n, k, seed):
  rng = np.random.default_rng(seed)
  indices = np.stack(
      [rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)]
  ).astype(np.int32)
  return rng.random((n, k)).astype(np.float32), indices


@pytest.mark.parametrize('n,k', [(7, 3), (300, 6)])
def test_graph_equals_the_dense_matrix(n, k):
  values, idx = _random_knn_lists(n, k, seed=n)
  hub = [r for r in range(n // 2, n) if 0 not in idx[r]]
  idx[hub, 0] = 0  # A hub, and (with the random lists) mutual pairs.
  if 1 not in idx[1]:
    idx[1, 0] = 1  # A self-loop: a_11 counts from both ends.
  graph = jax.jit(row_graph.build)(values, jnp.asarray(idx))
  w, degree = _dense_w(values, idx)
  np.testing.assert_allclose(_dense(graph), w, atol=1e-6)
  np.testing.assert_allclose(row_graph.degree(graph), degree, rtol=1e-5)
  # Each entry once, then padding: column N, weight 0.
  used = int(np.sum(graph.row_length))
  assert used == np.count_nonzero(w)
  assert (np.asarray(graph.column)[used:] == n).all()
  assert (np.asarray(graph.weight)[used:] == 0).all()


def test_a_mutual_pair_is_one_entry_by_hand():
  # 0 <-> 1 mutual (0.5 and 0.3), 2 -> 0 (0.2): W's 0-1 entry is 0.8 before normalising.
  values = np.array([[0.5], [0.3], [0.2]], np.float32)
  idx = np.array([[1], [0], [0]], np.int32)
  graph = row_graph.build(values, idx)
  np.testing.assert_array_equal(graph.row_length, [2, 1, 1])
  np.testing.assert_allclose(row_graph.degree(graph), [1.0, 0.8, 0.2], rtol=1e-6)
  np.testing.assert_allclose(
      _dense(graph),
      [
          [0, 0.8 / np.sqrt(0.8), 0.2 / np.sqrt(0.2)],
          [0.8 / np.sqrt(0.8), 0, 0],
          [0.2 / np.sqrt(0.2), 0, 0],
      ],
      rtol=1e-6,
  )


def test_a_column_listed_twice_adds_up():
  values = np.array([[0.25, 0.5], [0.0, 0.0], [0.0, 0.0]], np.float32)
  idx = np.array([[1, 1], [2, 0], [0, 1]], np.int32)
  w, _ = _dense_w(values, idx)
  np.testing.assert_allclose(_dense(row_graph.build(values, idx)), w, atol=1e-6)


@pytest.mark.parametrize('width', [1, 10, 37, 130])
def test_product_of_any_width_equals_the_dense_product(width):
  # Widths below, between and beyond the 16-wide vector chunks and the 128-wide spans.
  values, idx = _random_knn_lists(200, 5, seed=width)
  p = np.random.default_rng(width).standard_normal((200, width)).astype(np.float32)
  graph = row_graph.build(values, idx)
  w, _ = _dense_w(values, idx)
  np.testing.assert_allclose(jax.jit(row_graph.matvec)(graph, p), w @ p, atol=1e-5)
  if width == 1:
    np.testing.assert_allclose(row_graph.matvec(graph, p[:, 0]), w @ p[:, 0], atol=1e-5)


def test_a_node_without_affinity_stays_at_zero():
  rng = np.random.default_rng(1)
  others = np.delete(np.arange(20), 4)  # Nobody lists node 4 ...
  idx = np.stack([rng.choice(others[others != i], 3, replace=False) for i in range(20)])
  values = rng.random((20, 3)).astype(np.float32)
  values[4] = 0.0  # ... and its own affinities are 0: degree 0, D^-1/2 = 0, no NaN.
  graph = row_graph.build(values, idx.astype(np.int32))
  w = _dense(graph)
  assert row_graph.degree(graph)[4] == 0 and np.isfinite(w).all()
  assert (w[4] == 0).all() and (w[:, 4] == 0).all()
  np.testing.assert_allclose(w, _dense_w(values, idx)[0], atol=1e-6)


def test_bad_shapes_are_refused():
  values, idx = _random_knn_lists(10, 3, seed=0)
  with pytest.raises(ValueError, match='both be'):
    row_graph.build(values[:, :2], idx)
  graph = row_graph.build(values, idx)
  with pytest.raises(ValueError, match='N=10'):
    row_graph.matvec(graph, np.ones((9, 2), np.float32))
