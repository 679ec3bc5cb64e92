"""Label propagation: kNN search, the graph operator, CG, certainty weights, the stage-2 loss."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse.linalg  # noqa: E402

from semisup import knn_graph  # noqa: E402
from semisup import label_propagation as lp  # noqa: E402
from semisup.knn import drop_self, knn_search  # noqa: E402


def _brute_force(x, k):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = x @ x.T
  np.fill_diagonal(s, -np.inf)
  idx = np.argsort(-s, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(s, idx, 1), idx


def _dense_graph(x, k, gamma=3.0, clip=True):
  """D^-1/2 (A + A^T) D^-1/2 as a dense NumPy matrix."""
  n = x.shape[0]
  sims, idx = _brute_force(x.astype(np.float64), k)
  a = np.zeros((n, n))
  values = (np.maximum(sims, 0) if clip else sims) ** gamma
  a[np.repeat(np.arange(n), k), idx.ravel()] = values.ravel()
  w = a + a.T
  degree = w.sum(1)
  scale = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0)
  return scale[:, None] * w * scale[None]


def _dense_reference(x, labels, mask, num_classes, k, gamma=3.0, alpha=0.99, clip=True):
  """The whole method with dense NumPy matrices and an exact solve."""
  n = x.shape[0]
  wn = _dense_graph(x, k, gamma, clip)
  y = np.zeros((n, num_classes))
  for c in range(num_classes):
    members = np.flatnonzero(mask & (labels == c))
    y[members, c] = 1 / members.size
  z = np.linalg.solve(np.eye(n) - alpha * wn, y)
  zc = np.maximum(z, 0)
  probs = zc / zc.sum(1, keepdims=True)
  entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), 1)
  omega = 1 - entropy / np.log(num_classes)
  omega /= omega.max()
  pseudo = np.where(mask, labels, probs.argmax(1))
  omega = np.where(mask, 1.0, omega)
  zeta = (n / num_classes) / np.bincount(pseudo, minlength=num_classes)
  return z, pseudo, omega, zeta


# ----------------------------------------------------------------------------
# kNN search.
# ----------------------------------------------------------------------------
def test_blocked_jax_search_equals_brute_force():
  x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)  # Uses 16-wide runs.
  sims, idx = knn_search(x, 5, backend='jax', block_size=96)  # Last block is partial.
  ref_sims, ref_idx = _brute_force(x.astype(np.float64), 5)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_cpu_search_equals_brute_force():
  # 4,500 rows: several 128-query and 2,048-row tiles, the last of each partial.
  x = np.random.default_rng(3).standard_normal((4500, 8)).astype(np.float32)
  sims, idx = knn_search(x, 6, backend='cpu')
  ref_sims, ref_idx = _brute_force(x.astype(np.float64), 6)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_the_three_engines_give_the_same_neighbours():
  x = np.random.default_rng(1).standard_normal((300, 16)).astype(np.float32)
  jax_sims, jax_idx = knn_search(x, 7, backend='jax', block_size=64)
  for backend in ('faiss', 'cpu'):
    sims, idx = knn_search(x, 7, backend=backend)
    np.testing.assert_array_equal(idx, jax_idx)
    np.testing.assert_allclose(sims, jax_sims, atol=1e-5)


def test_auto_picks_the_cpu_engine_where_it_builds():
  from semisup import knn  # pylint: disable=import-outside-toplevel
  if jax.default_backend() == 'cpu':
    expected = 'cpu' if knn.cpu_unavailable_reason() is None else 'faiss'
    assert knn.default_backend() == expected


@pytest.mark.parametrize('backend', ['jax', 'faiss', 'cpu'])
def test_self_is_excluded_even_with_exact_duplicates(backend):
  x = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
  x[5] = x[3]
  x[7] = x[3]
  _, idx = knn_search(x, 3, backend=backend)
  assert not (idx == np.arange(20)[:, None]).any()
  assert set(idx[3, :2]) == {5, 7} and set(idx[5, :2]) == {3, 7}


def test_drop_self_removes_the_self_index_not_column_zero():
  sims = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
  idx = np.array([[4, 0, 2], [0, 4, 3]])  # Row 0: self second; row 1: self absent.
  kept_sims, kept = drop_self(sims, idx, 2)
  np.testing.assert_array_equal(kept, [[4, 2], [0, 4]])
  np.testing.assert_array_equal(kept_sims, [[1.0, 0.5], [1.0, 1.0]])


# ----------------------------------------------------------------------------
# The graph operator and conjugate gradient.
# ----------------------------------------------------------------------------
needs_row_kernels = pytest.mark.skipif(not knn_graph.LIBRARY.available(),
                                       reason=f'{knn_graph.LIBRARY.unavailable_reason()}')


def _structures():
  """`build`'s two inputs: the host layout (gather tables) and the kNN lists (CPU rows)."""
  return ['layout', pytest.param('rows', marks=needs_row_kernels)]


def _structure(kind, idx):
  return knn_graph.layout(idx) if kind == 'layout' else jnp.asarray(idx, jnp.int32)


@pytest.mark.parametrize('kind', _structures())
def test_graph_product_with_hub_equals_dense_matrix(kind):
  rng = np.random.default_rng(3)
  x = 0.02 * rng.standard_normal((150, 256)).astype(np.float32)
  x[:, 0] = 1.0  # In 256 dimensions the noise vectors are near orthogonal, so the
  x[0, 1:] = 0.0  # noiseless image 0 is everyone's nearest: in-degree 149.
  sims, idx = knn_search(x, 4, backend='jax')
  assert (idx[1:, 0] == 0).all()
  if kind == 'layout':
    layout = knn_graph.layout(idx)
    # Row 0 holds 149 entries: 8 in the first table (k + 4), 141 in 9 tiles of 16.
    assert layout.degree[0] == 149 and (layout.tile_row[:9] == 0).all()
    assert layout.tile_row[9] > 0
  graph = knn_graph.build(lp.affinities(jnp.asarray(sims), 3.0, True), _structure(kind, idx))
  assert isinstance(graph, knn_graph.RowGraph if kind == 'rows' else knn_graph.Graph)
  np.testing.assert_allclose(knn_graph.dense(graph), _dense_graph(x, 4), atol=1e-6)


def _random_knn_lists(n, k, seed):
  rng = np.random.default_rng(seed)
  return np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False)
                   for i in range(n)]).astype(np.int32), rng.random((n, k)).astype(np.float32)


@needs_row_kernels
@pytest.mark.parametrize('n,k', [(7, 3), (300, 6)])
def test_row_graph_equals_the_tables(n, k):
  idx, values = _random_knn_lists(n, k, seed=n)
  hub = [r for r in range(n // 2, n) if 0 not in idx[r]]
  idx[hub, 0] = 0  # A hub, and (with the random lists) mutual pairs.
  if 1 not in idx[1]:
    idx[1, 0] = 1  # A self-loop: a_11 counts from both ends.
  tables = knn_graph.build(values, knn_graph.layout(idx))
  rows = jax.jit(knn_graph.build)(values, jnp.asarray(idx))
  np.testing.assert_allclose(knn_graph.dense(rows), knn_graph.dense(tables), atol=1e-6)
  np.testing.assert_allclose(rows.degree, tables.degree, rtol=1e-5)
  used = int(np.sum(rows.row_length))
  assert (np.asarray(rows.column)[used:] == n).all() and (np.asarray(rows.weight)[used:] == 0).all()


@needs_row_kernels
@pytest.mark.parametrize('width', [1, 10, 37, 130])
def test_row_product_of_any_width_equals_the_tables(width):
  idx, values = _random_knn_lists(200, 5, seed=width)
  p = jnp.asarray(np.random.default_rng(width).standard_normal((200, width)), jnp.float32)
  tables = knn_graph.build(values, knn_graph.layout(idx))
  rows = knn_graph.build(values, jnp.asarray(idx))
  np.testing.assert_allclose(knn_graph.matvec(rows, p), knn_graph.matvec(tables, p), atol=1e-5)


@needs_row_kernels
def test_row_graph_leaves_a_node_without_affinity_at_zero():
  rng = np.random.default_rng(1)
  others = np.delete(np.arange(20), 4)  # Nobody lists node 4 ...
  idx = np.stack([rng.choice(others[others != i], 3, replace=False) for i in range(20)])
  values = rng.random((20, 3)).astype(np.float32)
  values[4] = 0.0  # ... and its own affinities are 0: degree 0, D^-1/2 = 0, no NaN.
  rows = knn_graph.build(values, jnp.asarray(idx, jnp.int32))
  w = knn_graph.dense(rows)
  assert rows.degree[4] == 0 and np.isfinite(w).all() and (w[4] == 0).all() and (w[:, 4] == 0).all()
  np.testing.assert_allclose(w, knn_graph.dense(knn_graph.build(values, knn_graph.layout(idx))),
                             atol=1e-6)


def test_structure_picks_rows_on_cpu_where_the_kernels_build():
  structure = knn_graph.structure(np.array([[1], [0]], np.int32))
  assert isinstance(structure, knn_graph.Layout) != knn_graph.row_kernels_enabled()


def test_entry_sort_without_packing_agrees():
  idx = np.random.default_rng(6).integers(0, 40, (40, 6))
  for a, b in zip(knn_graph._sorted_readings(idx), knn_graph._sorted_readings(idx, pack=False)):
    np.testing.assert_array_equal(a, b)


def test_conjugate_gradient_matches_dense_solve_and_scipy_step_for_step():
  rng = np.random.default_rng(4)
  m = rng.standard_normal((12, 12))
  a = m @ m.T + 12 * np.eye(12)
  b = rng.standard_normal((12, 3))
  matvec = lambda p: jnp.asarray(a, jnp.float32) @ p
  solved = lp.conjugate_gradient(matvec, b, iterations=12, rtol=0.0)
  np.testing.assert_allclose(solved, np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
  three_steps = lp.conjugate_gradient(matvec, b, iterations=3)
  for c in range(3):
    ref, _ = scipy.sparse.linalg.cg(a, b[:, c], rtol=1e-6, maxiter=3)
    np.testing.assert_allclose(three_steps[:, c], ref, rtol=1e-4, atol=1e-5)


def test_conjugate_gradient_stops_a_converged_column_like_scipy():
  a = np.diag([1.0, 2.0, 4.0])
  b = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # Each column is solved in one step.
  out = lp.conjugate_gradient(lambda p: jnp.asarray(a, jnp.float32) @ p, b, iterations=20)
  np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, 0.0], [0.0, 0.25]], atol=1e-7)


# ----------------------------------------------------------------------------
# The whole propagation.
# ----------------------------------------------------------------------------
SIX_POINTS = np.array([[1.0, 0.1], [1.0, 0.3], [0.9, 0.4], [0.1, 1.0], [0.3, 1.0], [0.5, 0.9]],
                      np.float32)


@needs_row_kernels
def test_propagation_on_rows_equals_propagation_on_tables(monkeypatch):
  # The CPU kernels against the path GPU/TPU take, end to end.
  rng = np.random.default_rng(7)
  centres = rng.standard_normal((3, 8))
  labels = np.arange(120) % 3
  x = (centres[labels] + 0.8 * rng.standard_normal((120, 8))).astype(np.float32)
  mask = np.zeros(120, bool)
  mask[:12] = True
  sims, idx = knn_search(x, 6, backend='jax')
  rows = lp.propagate(sims, idx, labels, mask, 3)
  monkeypatch.setattr(knn_graph, 'row_kernels_enabled', lambda: False)
  tables = lp.propagate(sims, idx, labels, mask, 3)
  np.testing.assert_allclose(rows.scores, tables.scores, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(rows.pseudo_labels, tables.pseudo_labels)
  np.testing.assert_allclose(rows.weights, tables.weights, atol=1e-5)
  np.testing.assert_allclose(rows.class_weights, tables.class_weights)


def test_six_point_graph_matches_hand_computation():
  labels = np.array([0, -1, -1, 1, -1, -1])
  mask = labels >= 0
  out = lp.label_propagation(SIX_POINTS, labels, mask, 2, k=2, cg_iterations=20,
                             knn_backend='jax')
  z, pseudo, omega, zeta = _dense_reference(SIX_POINTS, labels, mask, 2, k=2)
  np.testing.assert_allclose(out.scores, z, rtol=1e-4)
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(out.pseudo_labels, pseudo)
  np.testing.assert_allclose(out.weights, omega, atol=1e-5)
  np.testing.assert_allclose(out.class_weights, zeta)  # (6 / 2) / 3 = 1 for both classes.
  assert out.weights[0] == 1.0 and out.weights[3] == 1.0


def test_certainty_weights_by_hand():
  z = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 1.0], [-1.0, 0.5]])
  pseudo, omega = lp.certainty(z)
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))  # Row 3: z_hat = (0.75, 0.25).
  # Row 4 clips to (0, 0.5) -> (0, 1): certain. Row 2: nothing arrived -> 0.
  np.testing.assert_allclose(omega, [1.0, 0.0, 0.0, 1 - h / np.log(2), 1.0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(pseudo)[[0, 3, 4]], [0, 0, 1])


def test_class_weights_count_pseudo_labels():
  x = np.concatenate([SIX_POINTS, [[0.95, 0.2], [0.2, 0.95]]]).astype(np.float32)
  labels = np.array([0, -1, -1, 1, -1, -1, -1, -1])
  out = lp.label_propagation(x, labels, labels >= 0, 2, k=2, knn_backend='jax')
  counts = np.bincount(np.asarray(out.pseudo_labels), minlength=2)
  np.testing.assert_allclose(out.class_weights, (8 / 2) / counts)


def test_unreachable_image_gets_zero_weight_not_nan():
  # Images 6 and 7 only see each other (k=1): no path to a label. Image 8 points
  # away from all: its one affinity is clipped to 0, so it has no edge at all.
  x = np.concatenate([SIX_POINTS, [[-1.0, 0.02], [-1.0, -0.02], [0.0, -1.0]]]).astype(np.float32)
  labels = np.array([0, -1, -1, 1, -1, -1, -1, -1, -1])
  out = lp.label_propagation(x, labels, labels >= 0, 2, k=1, knn_backend='jax')
  assert np.isfinite(np.asarray(out.weights)).all() and np.isfinite(np.asarray(out.scores)).all()
  np.testing.assert_array_equal(np.asarray(out.weights)[6:], 0.0)
  assert (np.asarray(out.weights)[:6] > 0).all()


def test_reference_mode_keeps_negative_affinities():
  # Three clusters of 30 at 120 degrees: the 33 nearest hold 3 from other clusters, cos ~ -0.5.
  rng = np.random.default_rng(5)
  angle = 2 * np.pi * np.arange(3) / 3
  truth = np.repeat(np.arange(3), 30)
  x = 0.1 * rng.standard_normal((90, 4))
  x[:, 0] += np.cos(angle)[truth]
  x[:, 1] += np.sin(angle)[truth]
  mask = np.isin(np.arange(90), [0, 30, 60])
  sims, idx = knn_search(x.astype(np.float32), 32)
  assert (sims < 0).any()  # Negative affinities exist: the setting matters.
  unclipped = lp.propagate(sims, idx, truth, mask, 3, clip_negative=False, cg_iterations=90)
  z, pseudo, omega, _ = _dense_reference(x, truth, mask, 3, 32, clip=False)
  np.testing.assert_allclose(unclipped.scores, z, rtol=1e-3, atol=1e-5)
  np.testing.assert_array_equal(unclipped.pseudo_labels, pseudo)


# ----------------------------------------------------------------------------
# Bad input and the loss.
# ----------------------------------------------------------------------------
def test_bad_input_names_the_value():
  labels = np.array([0, -1, -1, 1, -1, -1])
  with pytest.raises(ValueError, match=r'labels has shape \(7,\) but there are 6 images'):
    lp.label_propagation(SIX_POINTS, np.append(labels, 0), np.append(labels >= 0, True), 2, k=2)
  with pytest.raises(ValueError, match='class 1 has no labeled image'):
    lp.label_propagation(SIX_POINTS, np.where(labels == 1, -1, labels), labels == 0, 2, k=2)
  bad = SIX_POINTS.copy()
  bad[4, 1] = np.nan
  with pytest.raises(ValueError, match='1 NaN/inf values in 1 rows .first: row 4'):
    lp.label_propagation(bad, labels, labels >= 0, 2, k=2)
  with pytest.raises(ValueError, match='k=6 must be in'):
    lp.label_propagation(SIX_POINTS, labels, labels >= 0, 2, k=6)
  with pytest.raises(ValueError, match='label 2, outside'):
    lp.label_propagation(SIX_POINTS, np.where(labels == 1, 2, labels), labels >= 0, 2, k=2)


def test_weighted_cross_entropy_by_hand():
  logits = jnp.array([[0.0, np.log(3.0)], [0.0, 0.0], [5.0, 5.0]])
  targets = jnp.array([0, 1, 0])
  # CE: log 4, log 2, log 2; weights omega * zeta[y]: 0.5 * 2, 1 * 1, 0 * 2.
  loss = lp.weighted_cross_entropy(logits, targets, jnp.array([0.5, 1.0, 0.0]),
                                   jnp.array([2.0, 1.0]))
  np.testing.assert_allclose(loss, (np.log(4.0) + np.log(2.0)) / 3, rtol=1e-6)
  grad = jax.grad(lambda l: lp.weighted_cross_entropy(l, targets, jnp.ones(3), jnp.ones(2)))(logits)
  np.testing.assert_allclose(grad[1], [1 / 6, -1 / 6], rtol=1e-6)
