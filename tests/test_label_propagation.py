"""Label propagation: kNN search, the graph operator, CG, certainty weights, the stage-2 loss."""

import os
import sys
import types

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse  # noqa: E402
import scipy.sparse.linalg  # noqa: E402
import scipy.stats  # noqa: E402

from groundwork import backend  # noqa: E402
from groundwork import diffusion  # noqa: E402
from groundwork import knn  # noqa: E402
from groundwork import knn_graph  # noqa: E402
from groundwork.knn import drop_self, knn_search  # noqa: E402
from semisup import label_propagation as lp  # noqa: E402


def _brute_force(x, k):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = x @ x.T
  np.fill_diagonal(s, -np.inf)
  idx = np.argsort(-s, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(s, idx, 1), idx


def _reference_w(values, indices):
  """W as the reference builds it (scipy.sparse, float64): A + A^T with repeated entries
  summed, `normalize_connection_graph` (diagonal removed, D^-1/2 with inf and NaN at 0)."""
  n, k = indices.shape
  a = scipy.sparse.csr_matrix(
      (
          np.asarray(values, np.float64).ravel(),
          (np.repeat(np.arange(n), k), np.asarray(indices).ravel()),
      ),
      shape=(n, n),
  )
  w = a + a.T
  w = w - scipy.sparse.diags(w.diagonal())
  with np.errstate(divide='ignore', invalid='ignore'):
    scale = np.asarray(1.0 / np.sqrt(w.sum(axis=1))).ravel()
  scale[~np.isfinite(scale)] = 0
  return (scipy.sparse.diags(scale) @ w @ scipy.sparse.diags(scale)).toarray()


def _reference_update_plabels(
    sims, idx, labels, mask, num_classes, alpha=0.99, max_iter=20, gamma=3
):
  """LP-DeepSSL's `update_plabels` from the kNN lists on: `D ** 3` unclipped, scipy's CG per
  class (float64), negatives to 0, L1 rows, `scipy.stats.entropy` weights, argmax, labeled
  overrides, class weights. Returns (scores, pseudo-labels, weights, class weights)."""
  n = idx.shape[0]
  wn = scipy.sparse.csr_matrix(_reference_w(np.asarray(sims, np.float64) ** gamma, idx))
  labeled = np.flatnonzero(mask)
  qsim = np.zeros((num_classes, n))
  for c in range(num_classes):
    members = labeled[labels[labeled] == c]
    qsim[c, members] = 1.0 / members.size
  system = scipy.sparse.eye(n) - alpha * wn
  scores = np.stack(
      [
          scipy.sparse.linalg.cg(system, qsim[c], rtol=1e-6, maxiter=max_iter)[0]
          for c in range(num_classes)
      ],
      axis=1,
  )
  clipped = np.maximum(scores, 0)
  probs = clipped / np.maximum(clipped.sum(axis=1, keepdims=True), 1e-12)
  weights = 1 - scipy.stats.entropy(probs.T) / np.log(num_classes)
  weights /= weights.max()
  pseudo = probs.argmax(axis=1)
  pseudo[labeled] = labels[labeled]
  weights[labeled] = 1.0
  zeta = (n / num_classes) / np.bincount(pseudo, minlength=num_classes)
  return scores, pseudo, weights, zeta


def _dense_reference(x, labels, mask, num_classes, k, gamma=3.0, alpha=0.99, clip=True):
  """The whole method with a dense W and an exact solve."""
  n = x.shape[0]
  sims, idx = _brute_force(x.astype(np.float64), k)
  wn = _reference_w((np.maximum(sims, 0) if clip else sims) ** gamma, idx)
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


def _clusters(n, d, classes, seed, noise=0.8):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, d))
  labels = np.arange(n) % classes
  return (centres[labels] + noise * rng.standard_normal((n, d))).astype(np.float32), labels


# ----------------------------------------------------------------------------
# kNN search.
# ----------------------------------------------------------------------------
def test_blocked_jax_search_equals_brute_force_on_device():
  x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)  # 16-wide runs.
  sims, idx = knn_search(jnp.asarray(x), 5, engine='jax', block_size=96)  # Last block partial.
  assert isinstance(sims, jax.Array) and isinstance(idx, jax.Array) and idx.dtype == jnp.int32
  ref_sims, ref_idx = _brute_force(x.astype(np.float64), 5)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_faiss_search_equals_brute_force():
  x = np.random.default_rng(1).standard_normal((300, 16)).astype(np.float32)
  sims, idx = knn_search(x, 7, engine='faiss')
  ref_sims, ref_idx = _brute_force(x.astype(np.float64), 7)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


@pytest.mark.parametrize('engine', ['jax', 'faiss'])
def test_self_is_excluded_even_with_exact_duplicates(engine):
  x = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
  x[5] = x[3]
  x[7] = x[3]
  sims, idx = knn_search(x, 3, engine=engine)
  idx, sims = np.asarray(idx), np.asarray(sims)
  assert not (idx == np.arange(20)[:, None]).any()
  # Row 3's two duplicates come first at similarity 1, then its brute-force third.
  for row, twins in ((3, {5, 7}), (5, {3, 7}), (7, {3, 5})):
    assert set(idx[row, :2]) == twins
    np.testing.assert_allclose(sims[row, :2], 1.0, atol=1e-6)
  others = np.delete(np.arange(20), [5, 7])
  ref_sims, ref_idx = _brute_force(x[others].astype(np.float64), 1)
  row3 = np.flatnonzero(others == 3)[0]
  assert idx[3, 2] == others[ref_idx[row3, 0]]
  np.testing.assert_allclose(sims[3, 2], ref_sims[row3, 0], atol=1e-6)


def test_drop_self_removes_the_self_index_not_column_zero():
  sims = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
  idx = np.array([[4, 0, 2], [0, 4, 3]])  # Row 0: self second; row 1: self absent.
  kept_sims, kept = drop_self(sims, idx, 2)
  np.testing.assert_array_equal(kept, [[4, 2], [0, 4]])
  np.testing.assert_array_equal(kept_sims, [[1.0, 0.5], [1.0, 1.0]])


def _fake_package(monkeypatch, **attributes):
  """A stand-in `groundwork_cpu` that `backend.cpu_kernels()` returns."""
  package = types.ModuleType('groundwork_cpu')
  package.__path__ = []
  for name, value in attributes.items():
    setattr(package, name, value)
    if isinstance(value, types.ModuleType):
      monkeypatch.setitem(sys.modules, f'groundwork_cpu.{name}', value)
  monkeypatch.setitem(sys.modules, 'groundwork_cpu', package)
  monkeypatch.setattr(backend, 'cpu_kernels', lambda: package)
  return package


def test_auto_engine_is_jax_without_the_cpu_package(monkeypatch):
  monkeypatch.setattr(backend, 'cpu_kernels', lambda: None)
  assert knn.resolve('auto') == 'jax' and knn.resolve('faiss') == 'faiss'


def test_cpu_engine_hands_the_package_l2_normalised_numpy(monkeypatch):
  seen = {}

  def search(x, k):
    seen['x'], seen['k'] = x, k
    return np.zeros((x.shape[0], k), np.float64), np.ones((x.shape[0], k), np.int64)

  _fake_package(monkeypatch, knn_search=search)
  assert knn.resolve('auto') == 'cpu'
  sims, idx = knn_search(jnp.array([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]]), 1)
  assert isinstance(seen['x'], np.ndarray) and seen['k'] == 1
  np.testing.assert_allclose(seen['x'], [[0.6, 0.8], [0.0, 1.0], [0.0, 0.0]], rtol=1e-6)
  assert sims.dtype == np.float32 and idx.dtype == np.int32


def test_unknown_engine_names_the_argument():
  # The config field is named by check_settings (test_bad_settings_name_the_config_field...).
  with pytest.raises(ValueError, match=r"kNN engine 'gpu' \(engine\) is not one"):
    knn_search(np.eye(3, dtype=np.float32), 1, engine='gpu')


# ----------------------------------------------------------------------------
# The graph operator.
# ----------------------------------------------------------------------------
def _hub_graph():
  """Lists of 12 nodes, k = 3: node 0 a hub listed by nodes 1-10; 1 and 2, 3 and 4 mutual
  pairs; 5 lists 7 twice (summed, as scipy's csr); 6 lists itself (dropped, as the
  reference removes the diagonal); 11 isolated (nobody lists it, its affinities are 0)."""
  idx = np.array(
      [
          [1, 2, 3],
          [0, 2, 4],
          [0, 1, 5],
          [0, 4, 6],
          [0, 3, 7],
          [0, 7, 7],
          [0, 6, 8],
          [0, 8, 9],
          [0, 9, 1],
          [0, 1, 2],
          [0, 3, 5],
          [0, 1, 2],
      ],
      np.int32,
  )
  values = np.random.default_rng(0).uniform(0.1, 1.0, idx.shape).astype(np.float32)
  values[11] = 0.0
  return values, idx


def _random_lists(n, k, seed, low=0.0):
  rng = np.random.default_rng(seed)
  idx = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
  return rng.uniform(low, 1.0, (n, k)).astype(np.float32), idx.astype(np.int32)


def test_coo_graph_with_hub_pairs_repeats_self_edge_and_isolated_node():
  values, idx = _hub_graph()
  graph = jax.jit(knn_graph.coo_build)(values, idx)
  w = knn_graph.dense(graph, 12)
  np.testing.assert_allclose(w, _reference_w(values, idx), atol=1e-6)
  # By hand: a mutual pair adds both affinities, the self edge is gone, 11 has nothing.
  v = values.astype(np.float64)
  a12 = v[1, 1] + v[2, 1]
  assert graph.degree[11] == 0 and (w[11] == 0).all() and (w[:, 11] == 0).all()
  assert w[6, 6] == 0
  hub_degree = v[0].sum() + v[1:11, 0].sum() + v[11, 0]
  degree_1 = v[1].sum() + v[0, 0] + v[2, 1] + v[8, 2] + v[9, 1] + v[11, 1]
  degree_2 = v[2].sum() + v[0, 1] + v[1, 1] + v[9, 2] + v[11, 2]
  np.testing.assert_allclose(
      np.asarray(graph.degree)[[0, 1, 2]], [hub_degree, degree_1, degree_2], rtol=1e-6
  )
  np.testing.assert_allclose(w[1, 2], a12 / np.sqrt(degree_1 * degree_2), rtol=1e-6)
  degree_5 = v[5].sum() + v[2, 2] + v[10, 2]
  degree_7 = v[7].sum() + v[4, 2] + v[5, 1] + v[5, 2]
  np.testing.assert_allclose(w[5, 7], (v[5, 1] + v[5, 2]) / np.sqrt(degree_5 * degree_7), rtol=1e-6)


@pytest.mark.parametrize('n,k,low', [(7, 3, 0.0), (300, 6, 0.0), (200, 5, -0.3)])
def test_coo_graph_equals_the_reference_w(n, k, low):
  # low < 0: unclipped negative affinities, some degrees <= 0 (D^-1/2 = 0 there, as the
  # reference's NaN mapped to 0).
  values, idx = _random_lists(n, k, seed=n, low=low)
  graph = knn_graph.coo_build(values, idx)
  np.testing.assert_allclose(knn_graph.dense(graph, n), _reference_w(values, idx), atol=1e-5)


@pytest.mark.parametrize('width', [1, 3, 37])
def test_coo_product_equals_dense_w_times_p(width):
  values, idx = _random_lists(150, 8, seed=width)
  p = np.random.default_rng(width).standard_normal((150, width)).astype(np.float32)
  graph = knn_graph.coo_build(values, idx)
  product = jax.jit(knn_graph.coo_matvec)(graph, jnp.asarray(p))
  np.testing.assert_allclose(product, _reference_w(values, idx) @ p, rtol=1e-5, atol=1e-5)


def test_graph_ops_picks_coo_without_the_cpu_package(monkeypatch):
  monkeypatch.setattr(backend, 'cpu_kernels', lambda: None)
  assert knn_graph.graph_ops() is knn_graph.COO and knn_graph.graph_ops('coo') is knn_graph.COO
  monkeypatch.setattr(backend, 'computes_on_cpu', lambda: True)
  monkeypatch.setitem(sys.modules, 'groundwork_cpu', None)  # Import fails: not installed.
  with pytest.raises(RuntimeError, match='groundwork_cpu package is not installed'):
    knn_graph.graph_ops('rows')
  with pytest.raises(ValueError, match="graph kind 'dense' is not one of"):
    knn_graph.graph_ops('dense')


def test_graph_ops_picks_the_package_row_graph_and_propagation_uses_it(monkeypatch):
  calls = []
  row_graph = types.ModuleType('groundwork_cpu.row_graph')
  row_graph.build = lambda values, indices: calls.append('build') or knn_graph.coo_build(
      values, indices
  )
  row_graph.matvec = lambda graph, p: calls.append('matvec') or knn_graph.coo_matvec(graph, p)
  _fake_package(monkeypatch, row_graph=row_graph)
  ops = knn_graph.graph_ops()
  assert ops == knn_graph.GraphOps(row_graph.build, row_graph.matvec)
  assert knn_graph.graph_ops('coo') is knn_graph.COO
  x, labels = _clusters(60, 4, 2, seed=9)
  sims, idx = knn_search(x, 5, engine='jax')
  mask = np.arange(60) < 6
  rows = lp.propagate(sims, idx, labels, mask, 2)
  assert calls == ['build', 'matvec']  # Traced once each, inside the two programs.
  coo = lp.propagate(sims, idx, labels, mask, 2, graph_ops=knn_graph.COO)
  np.testing.assert_array_equal(rows.scores, coo.scores)


@pytest.mark.skipif(
    backend.cpu_kernels() is None,
    reason='the groundwork_cpu package is not ' 'installed (or JAX does not compute on the CPU)',
)
def test_the_package_row_graph_gives_the_coo_w():
  # The seam's contract only; the package's own tests cover its kernels.
  values, idx = _random_lists(300, 6, seed=4)
  idx[150:, 0] = 0  # A hub.
  rows = knn_graph.graph_ops('rows')
  graph = jax.jit(rows.build)(values, idx)
  np.testing.assert_allclose(
      knn_graph.dense(graph, 300, rows), _reference_w(values, idx), atol=1e-6
  )


# ----------------------------------------------------------------------------
# Conjugate gradient.
# ----------------------------------------------------------------------------
def test_conjugate_gradient_matches_dense_solve_and_scipy_step_for_step():
  rng = np.random.default_rng(4)
  m = rng.standard_normal((12, 12))
  a = m @ m.T + 12 * np.eye(12)
  b = rng.standard_normal((12, 3))
  matvec = lambda p: jnp.asarray(a, jnp.float32) @ p
  solved = diffusion.conjugate_gradient(matvec, b, iterations=12, rtol=0.0)
  np.testing.assert_allclose(solved, np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
  for iterations in (1, 3, 5):
    steps = diffusion.conjugate_gradient(matvec, b, iterations=iterations)
    for c in range(3):
      ref, _ = scipy.sparse.linalg.cg(a, b[:, c], rtol=1e-6, maxiter=iterations)
      np.testing.assert_allclose(steps[:, c], ref, rtol=1e-4, atol=1e-5)


def test_conjugate_gradient_on_the_graph_equals_scipy_per_column():
  values, idx = _random_lists(200, 6, seed=3)
  graph = knn_graph.coo_build(values, idx)
  system = np.eye(200) - 0.99 * _reference_w(values, idx)
  b = np.zeros((200, 4), np.float32)
  b[np.arange(0, 200, 10), np.arange(20) % 4] = 0.2
  out = diffusion.conjugate_gradient(lambda p: p - 0.99 * knn_graph.coo_matvec(graph, p), b, 20)
  for c in range(4):
    ref, _ = scipy.sparse.linalg.cg(system, b[:, c].astype(np.float64), rtol=1e-6, maxiter=20)
    np.testing.assert_allclose(out[:, c], ref, rtol=1e-4, atol=1e-6)


def test_conjugate_gradient_stops_a_converged_column_like_scipy():
  a = np.diag([1.0, 2.0, 4.0])
  b = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # Each column is solved in one step.
  out = diffusion.conjugate_gradient(lambda p: jnp.asarray(a, jnp.float32) @ p, b, iterations=20)
  np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, 0.0], [0.0, 0.25]], atol=1e-7)


# ----------------------------------------------------------------------------
# The whole propagation.
# ----------------------------------------------------------------------------
SIX_POINTS = np.array(
    [[1.0, 0.1], [1.0, 0.3], [0.9, 0.4], [0.1, 1.0], [0.3, 1.0], [0.5, 0.9]], np.float32
)


def _three_arcs(n, seed):
  """Three clusters at 120 degrees: a list longer than a cluster reaches the others (cos ~
  -0.5), so unclipped affinities are negative there."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 3
  x = 0.25 * rng.standard_normal((n, 4))
  x[:, 0] += np.cos(2 * np.pi * labels / 3)
  x[:, 1] += np.sin(2 * np.pi * labels / 3)
  return x.astype(np.float32), labels


@pytest.mark.parametrize('clip', [True, False])
def test_propagation_equals_a_replica_of_the_reference_step(clip):
  # From the same kNN lists; 20 CG steps (not converged), scipy in float64, ours in float32.
  # Clipped: the paper's affinities on 4 noisy clusters; unclipped: the reference code's.
  if clip:
    (x, labels), k, labeled = _clusters(400, 8, 4, seed=7, noise=1.2), 10, 40
  else:
    (x, labels), k, labeled = _three_arcs(150, seed=5), 55, 9
  mask = np.arange(len(labels)) < labeled
  sims, idx = knn_search(x, k, engine='jax')
  sims, idx = np.asarray(sims), np.asarray(idx)
  assert clip or (sims < 0).mean() > 0.02  # The unclipped mode matters here.
  ours = lp.propagate(sims, idx, labels, mask, labels.max() + 1, clip_negative=clip)
  scores, pseudo, weights, zeta = _reference_update_plabels(
      np.maximum(sims, 0) if clip else sims, idx, labels, mask, labels.max() + 1
  )
  np.testing.assert_allclose(ours.scores, scores, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(ours.pseudo_labels, pseudo)
  np.testing.assert_allclose(ours.weights, weights, atol=1e-5)
  np.testing.assert_allclose(ours.class_weights, zeta, rtol=1e-6)
  assert 0.6 < np.mean(pseudo[~mask] == labels[~mask]) < 1.0  # A real task, not a trivial one.


@pytest.mark.filterwarnings('ignore:config.lp.k=')
def test_six_point_graph_matches_hand_computation():
  labels = np.array([0, -1, -1, 1, -1, -1])
  mask = labels >= 0
  out = lp.label_propagation(SIX_POINTS, labels, mask, 2, k=2, cg_iterations=20, knn_engine='jax')
  z, pseudo, omega, zeta = _dense_reference(SIX_POINTS, labels, mask, 2, k=2)
  np.testing.assert_allclose(out.scores, z, rtol=1e-4)
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(out.pseudo_labels, pseudo)
  np.testing.assert_allclose(out.weights, omega, atol=1e-5)
  np.testing.assert_allclose(out.class_weights, zeta)  # (6 / 2) / 3 = 1 for both classes.
  assert out.weights[0] == 1.0 and out.weights[3] == 1.0


def test_seed_matrix_by_hand():
  y = lp.seed_matrix(jnp.array([0, 0, 2, 0, 1, 0]), jnp.array([1, 1, 1, 0, 1, 0], bool), 3)
  np.testing.assert_array_equal(
      y, [[0.5, 0, 0], [0.5, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]]
  )


def test_certainty_weights_by_hand():
  z = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 1.0], [-1.0, 0.5]])
  pseudo, omega = lp.certainty(z)
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))  # Row 3: z_hat = (0.75, 0.25).
  # Row 4 clips to (0, 0.5) -> (0, 1): certain. Row 2: nothing arrived -> 0.
  np.testing.assert_allclose(omega, [1.0, 0.0, 0.0, 1 - h / np.log(2), 1.0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(pseudo)[[0, 3, 4]], [0, 0, 1])


@pytest.mark.filterwarnings('ignore:config.lp.k=')
def test_class_weights_count_pseudo_labels():
  x = np.concatenate([SIX_POINTS, [[0.95, 0.2], [0.2, 0.95]]]).astype(np.float32)
  labels = np.array([0, -1, -1, 1, -1, -1, -1, -1])
  out = lp.label_propagation(x, labels, labels >= 0, 2, k=2, knn_engine='jax')
  np.testing.assert_array_equal(out.pseudo_labels, [0, 0, 0, 1, 1, 1, 0, 1])
  np.testing.assert_allclose(out.class_weights, [1.0, 1.0])  # (8 / 2) / 4 each.


@pytest.mark.filterwarnings('ignore:config.lp.k=')
def test_unreachable_image_gets_zero_weight_not_nan():
  # Images 6 and 7 only see each other (k=1): no path to a label. Image 8 points
  # away from all: its one affinity is clipped to 0, so it has no edge at all.
  x = np.concatenate([SIX_POINTS, [[-1.0, 0.02], [-1.0, -0.02], [0.0, -1.0]]]).astype(np.float32)
  labels = np.array([0, -1, -1, 1, -1, -1, -1, -1, -1])
  out = lp.label_propagation(x, labels, labels >= 0, 2, k=1, knn_engine='jax')
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
  sims, idx = knn_search(x.astype(np.float32), 32, engine='jax')
  assert (np.asarray(sims) < 0).any()  # Negative affinities exist: the setting matters.
  unclipped = lp.propagate(sims, idx, truth, mask, 3, clip_negative=False, cg_iterations=90)
  z, pseudo, omega, _ = _dense_reference(x, truth, mask, 3, 32, clip=False)
  np.testing.assert_allclose(unclipped.scores, z, rtol=1e-3, atol=1e-5)
  np.testing.assert_array_equal(unclipped.pseudo_labels, pseudo)


def test_propagation_stays_on_device_and_compiles_once_per_shape():
  x, labels = _clusters(80, 6, 2, seed=11)
  mask = np.arange(80) < 8
  before = lp._diffuse._cache_size()  # pylint: disable=protected-access
  for seed in (0, 1):  # Another epoch: new features, same shapes.
    features = jnp.asarray(x) + 0.01 * jax.random.normal(jax.random.key(seed), x.shape)
    out = lp.label_propagation(features, labels, mask, 2, k=5, knn_engine='jax')
    assert all(isinstance(leaf, jax.Array) for leaf in out)
  assert lp._diffuse._cache_size() == before + 1  # pylint: disable=protected-access


def test_trainer_embeds_on_device_like_map_in_batches():
  from groundwork.evaluation import map_in_batches  # pylint: disable=import-outside-toplevel
  from semisup import classifier  # pylint: disable=import-outside-toplevel

  images = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  calls = []
  fn = lambda b, start: calls.append((b.shape, start)) or jnp.asarray(b) * 2.0 + 1.0
  features = classifier.embed_on_device(fn, images, 3)  # Batches of 3, 3 and 1 padded to 3.
  assert isinstance(features, jax.Array) and calls == [((3, 3), 0), ((3, 3), 3), ((3, 3), 6)]
  np.testing.assert_array_equal(features, images * 2 + 1)
  np.testing.assert_array_equal(features, map_in_batches(lambda b: fn(b, 0), images, 3))


# ----------------------------------------------------------------------------
# Checks and the loss.
# ----------------------------------------------------------------------------
GOOD = dict(k=50, gamma=3.0, alpha=0.99, cg_iterations=20, clip_negative=True)


@pytest.mark.parametrize(
    'change,message',
    [
        (dict(k=0), r'config.lp.k=0 must be an integer in \[1, N-1\]'),
        (dict(k=2.5), r'config.lp.k=2.5 must be an integer'),
        (dict(alpha=1.0), r'config.lp.alpha=1.0 must lie in \(0, 1\): outside it I - alpha W'),
        (dict(alpha=0.0), r'config.lp.alpha=0.0 must lie in \(0, 1\)'),
        (dict(gamma=0.0), r'config.lp.gamma=0.0 must be positive'),
        (
            dict(gamma=2.5, clip_negative=False),
            r'config.lp.gamma=2.5 must be an integer with config.lp.clip_negative=False',
        ),
        (dict(cg_iterations=0), r'config.lp.cg_iterations=0 must be an integer, at least 1'),
        (dict(knn_engine='gpu'), r"kNN engine 'gpu' \(config.lp.knn_engine\) is not one of"),
        (
            dict(num_images=50),
            r'config.lp.k=50 must be smaller than the 50 images: it lies in '
            r'\[1, N-1\] = \[1, 49\]',
        ),
    ],
)
def test_bad_settings_name_the_config_field_and_range(change, message):
  with pytest.raises(ValueError, match=message):
    lp.check_settings(**{**GOOD, **change})


def test_good_settings_pass_and_a_large_k_warns():
  lp.check_settings(**GOOD)
  lp.check_settings(**{**GOOD, 'gamma': 2.5}, num_images=50_000)  # Clipped: any gamma > 0.
  with pytest.warns(UserWarning, match='config.lp.k=50 is 20% of the 250 images'):
    lp.check_settings(**GOOD, num_images=250)


def test_bad_labels_name_the_problem():
  labels = np.array([0, -1, -1, 1, -1, -1])
  lp.check_labels(labels, labels >= 0, 2)
  with pytest.raises(ValueError, match=r'labels \(7,\) and labeled_mask \(6,\) must both be'):
    lp.check_labels(np.append(labels, 0), labels >= 0, 2)
  with pytest.raises(
      ValueError, match=r'class 1 has no labeled image \(1 of 2 classes have ' r'none: \[1\]\)'
  ):
    lp.check_labels(labels, labels == 0, 2)
  with pytest.raises(ValueError, match=r'labeled images carry label 2, outside \[0, 1\]'):
    lp.check_labels(np.where(labels == 1, 2, labels), labels >= 0, 2)
  with pytest.raises(ValueError, match='num_classes=1: propagation needs at least 2'):
    lp.check_labels(np.zeros(6, int), labels >= 0, 1)


@pytest.mark.filterwarnings('ignore:config.lp.k=')
def test_label_propagation_checks_settings_and_features():
  labels = np.array([0, -1, -1, 1, -1, -1])
  with pytest.raises(ValueError, match=r'config.lp.k=6 must be smaller than the 6 images'):
    lp.label_propagation(SIX_POINTS, labels, labels >= 0, 2, k=6)
  with pytest.raises(ValueError, match=r'config.lp.alpha=1.5 must lie in \(0, 1\)'):
    lp.label_propagation(SIX_POINTS, labels, labels >= 0, 2, k=2, alpha=1.5)
  bad = SIX_POINTS.copy()
  bad[4, 1] = np.nan
  bad[2, 0] = np.inf
  with pytest.raises(ValueError, match=r'2 NaN/inf values in 2 rows \(first: row 2\)'):
    lp.label_propagation(bad, labels, labels >= 0, 2, k=2)
  with pytest.raises(ValueError, match=r'features must be \[N, d\]; got shape \(6,\)'):
    lp.label_propagation(SIX_POINTS[:, 0], labels, labels >= 0, 2, k=2)


def test_weighted_cross_entropy_by_hand():
  logits = jnp.array([[0.0, np.log(3.0)], [0.0, 0.0], [5.0, 5.0]])
  targets = jnp.array([0, 1, 0])
  # CE: log 4, log 2, log 2; weights omega * zeta[y]: 0.5 * 2, 1 * 1, 0 * 2.
  loss = lp.weighted_cross_entropy(
      logits, targets, jnp.array([0.5, 1.0, 0.0]), jnp.array([2.0, 1.0])
  )
  np.testing.assert_allclose(loss, (np.log(4.0) + np.log(2.0)) / 3, rtol=1e-6)
  grad = jax.grad(lambda l: lp.weighted_cross_entropy(l, targets, jnp.ones(3), jnp.ones(2)))(logits)
  np.testing.assert_allclose(grad[1], [1 / 6, -1 / 6], rtol=1e-6)
