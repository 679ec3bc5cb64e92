"""Retrieval metrics by hand, rankings with ties, and diffusion re-ranking against a replica."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from groundwork import backend  # noqa: E402
from groundwork import diffusion  # noqa: E402
from groundwork import knn  # noqa: E402
from groundwork.evaluation import retrieval  # noqa: E402

# Six queries, three ranked items each. Query 5 is alone in class 2 (R = 0): left out.
#   query  class  R  ranked classes   P@1  R@1  R@2  R-Precision  MAP@R
#   0      0      1  1 0 1            0    0    1    0/1          0
#   1      0      1  0 1 1            1    1    1    1/1          1
#   2      1      2  1 0 1            1    1    1    1/2          (1/1 + 0) / 2 = 0.5
#   3      1      2  0 1 1            0    0    1    1/2          (0 + 1/2) / 2 = 0.25
#   4      1      2  1 1 0            1    1    1    2/2          (1/1 + 2/2) / 2 = 1
#   5      2      0  0 0 1            -    -    -    -            -
QUERY_LABELS = np.array([0, 0, 1, 1, 1, 2])
RANKED_LABELS = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
RELEVANT = np.array([1, 1, 2, 2, 2, 0])


def test_other_members_counts_the_rest_of_each_class():
  np.testing.assert_array_equal(retrieval.other_members(QUERY_LABELS), RELEVANT)
  np.testing.assert_array_equal(retrieval.other_members(['b', 'a', 'b']), [1, 0, 1])


def test_each_metric_by_hand_with_a_lone_query_left_out():
  args = (RANKED_LABELS, QUERY_LABELS, RELEVANT)
  assert retrieval.precision_at_1(*args) == pytest.approx(3 / 5)
  assert retrieval.recall_at_k(*args, 1) == pytest.approx(3 / 5)
  assert retrieval.recall_at_k(*args, 2) == pytest.approx(1.0)
  assert retrieval.r_precision(*args) == pytest.approx((0 + 1 + 0.5 + 0.5 + 1) / 5)
  # Query 3's third item is of its class but past R = 2: it does not count.
  assert retrieval.map_at_r(*args) == pytest.approx((0 + 1 + 0.5 + 0.25 + 1) / 5)


def test_metrics_refuse_what_they_cannot_measure():
  with pytest.raises(ValueError, match='no query has another item of its class'):
    retrieval.precision_at_1(RANKED_LABELS[5:], QUERY_LABELS[5:], RELEVANT[5:])
  with pytest.raises(ValueError, match=r'R = 2 other members of its class but only 1 items'):
    retrieval.map_at_r(RANKED_LABELS[:, :1], QUERY_LABELS, RELEVANT)
  with pytest.raises(ValueError, match=r'R@4 needs k in \[1, depth = 3\]'):
    retrieval.recall_at_k(RANKED_LABELS, QUERY_LABELS, RELEVANT, 4)


# Unit vectors with exact ties: 0 is equally close to 1 (other class) and 2 (its class); 3
# is orthogonal to 0, 1 and 2 alike. Similarities: s01 = s02 = 0.6, s12 = -0.28, s*3 = 0.
TIES = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0.6, -0.8, 0], [0, 0, 1.0]], np.float32)
TIE_LABELS = np.array([0, 1, 0, 1])


def _engines():
  return ['jax'] + (['cpu'] if backend.cpu_kernels() is not None else [])


@pytest.mark.parametrize('engine', _engines())
def test_euclidean_ranking_breaks_ties_by_index_and_metrics_follow(engine):
  ranked = retrieval.rankings(TIES, 3, k=2, query_k=1, knn_engine=engine)['euclidean']
  # 0: 1 before 2 (tie); 1: 0, 3 (0), 2 (-0.28); 2: 0, 3, 1; 3: all tied, by index.
  np.testing.assert_array_equal(ranked, [[1, 2, 3], [0, 3, 2], [0, 3, 1], [0, 1, 2]])
  metrics = retrieval.ranking_metrics(ranked, TIE_LABELS)
  # Classes ranked: 0: 1 0 1; 1: 0 1 0; 2: 0 1 1; 3: 0 1 0; every R is 1.
  assert metrics == pytest.approx(
      dict(
          precision_at_1=0.25,
          recall_at_1=0.25,
          recall_at_2=1.0,
          r_precision=0.25,
          map_at_r=0.25,
      )
  )


def test_nmi_by_hand():
  # Two tight clusters {0, 2} and {1, 3}: labels that follow them give 1; labels that split
  # each cluster evenly carry no information about it, 0.
  x = np.array([[1.0, 0.01], [0.01, 1.0], [1.0, -0.01], [-0.01, 1.0]], np.float32)
  assert retrieval.nmi(x, [0, 1, 0, 1], seed=0) == pytest.approx(1.0)
  assert retrieval.nmi(x, [0, 0, 1, 1], seed=0) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------
# Diffusion re-ranking (Iscen et al., CVPR 2017).
# ----------------------------------------------------------------------------
def _replica_scores(x, k, query_k, gamma=3.0, alpha=0.99):
  """The paper's code in dense float64: kNN lists, mutual kNN graph of s^gamma (negatives 0,
  no diagonal), D^-1/2 A D^-1/2, y of the query's query_k nearest, exact solve. Row q: the
  scores of every item for item q as query."""
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = x @ x.T
  np.fill_diagonal(s, -np.inf)
  order = np.argsort(-s, axis=1, kind='stable')
  n = len(x)
  listed = np.zeros((n, n), bool)
  listed[np.arange(n)[:, None], order[:, :k]] = True
  a = np.where(listed & listed.T, np.maximum(s, 0) ** gamma, 0.0)
  degree = a.sum(axis=1)
  scale = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0)
  w = scale[:, None] * a * scale[None, :]
  y = np.zeros((n, n))
  for q in range(n):
    y[order[q, :query_k], q] = np.maximum(s[q, order[q, :query_k]], 0) ** gamma
  return np.linalg.solve(np.eye(n) - alpha * w, y).T


def _clusters(n, d, classes, seed):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, d))
  labels = np.arange(n) % classes
  return (centres[labels] + 0.9 * rng.standard_normal((n, d))).astype(np.float32), labels


def test_diffusion_ranking_equals_the_dense_replica():
  x, _ = _clusters(40, 5, 4, seed=3)
  z = _replica_scores(x.astype(np.float64), k=6, query_k=3)
  # 40 nodes: CG meets its tolerance (1e-6) well within 200 steps.
  sims, idx = knn.knn_search(x, 6, engine='jax')
  graph = diffusion.build_graph(sims, idx, mutual=True)
  scores, items = diffusion.diffusion_ranking(
      graph, sims[:, :3], idx[:, :3], 39, exclude=jnp.arange(40), iterations=200
  )
  # Items diffusion never reached (score 0) tie, by index; the query itself is never ranked.
  key = np.where(z > 1e-6, -z, 0.0)
  key[np.eye(40, dtype=bool)] = np.inf
  expected = np.argsort(key, axis=1, kind='stable')[:, :39]
  np.testing.assert_array_equal(items, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(z, expected, 1), rtol=1e-4, atol=1e-6)


def test_query_seeds_by_hand():
  y = diffusion.query_seeds(jnp.array([[0.5, -0.2], [1.0, 0.5]]), jnp.array([[2, 0], [0, 3]]), 4)
  # Query 0: item 2 at 0.5^3, item 0 clipped to 0; query 1: item 0 at 1, item 3 at 0.125.
  np.testing.assert_allclose(y, [[0, 1], [0, 0], [0.125, 0], [0, 0.125]])


def test_diffusion_raises_map_at_r_on_manifold_data():
  # Points along three concentric circles: Euclidean neighbours cross between circles of
  # nearby radius only near each point, while the graph follows each circle around.
  rng = np.random.default_rng(0)
  angles = rng.uniform(0, 2 * np.pi, 450)
  labels = np.arange(450) % 3
  radius = 1.0 + 0.5 * labels
  x = np.stack([radius * np.cos(angles), radius * np.sin(angles), np.ones(450)], 1)
  report = retrieval.retrieval_report(
      x.astype(np.float32), labels, seed=0, k=10, query_k=5, knn_engine='jax'
  )
  assert report['queries'] == 450 and 0 <= report['nmi'] <= 1
  assert report['euclidean_map_at_r'] < 0.25 and report['diffusion_map_at_r'] > 0.45


def test_retrieval_settings_name_the_config_field():
  good = dict(config_path='config.eval.retrieval', k=50, query_k=10, gamma=3.0, alpha=0.99)
  retrieval.check_settings(**good, cg_iterations=20, num_images=2120)
  with pytest.raises(ValueError, match=r'config.eval.retrieval.query_k=60 must be an integer in'):
    retrieval.check_settings(**{**good, 'query_k': 60}, cg_iterations=20)
  with pytest.raises(ValueError, match=r'config.eval.retrieval.alpha=1.0 must lie in \(0, 1\)'):
    retrieval.check_settings(**{**good, 'alpha': 1.0}, cg_iterations=20)
  with pytest.raises(ValueError, match=r'config.eval.retrieval.k=50 must be smaller than the 40'):
    retrieval.check_settings(**good, cg_iterations=20, num_images=40)


def test_diffuse_from_features_or_a_built_graph_equals_a_dense_solve():
  x, labels = _clusters(60, 4, 3, seed=5)
  seeds = np.eye(3, dtype=np.float32)[labels] * (np.arange(60) < 9)[:, None]
  # Dense float64: W = D^-1/2 (A + A^T) D^-1/2 of the 5-NN lists, s^3, then an exact solve.
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = unit.astype(np.float64) @ unit.T.astype(np.float64)
  np.fill_diagonal(s, -np.inf)
  a = np.zeros((60, 60))
  rows = np.arange(60)[:, None]
  nearest = np.argsort(-s, axis=1, kind='stable')[:, :5]
  a[rows, nearest] = np.maximum(s[rows, nearest], 0) ** 3
  a = a + a.T
  scale = 1 / np.sqrt(a.sum(axis=1))
  expected = np.linalg.solve(np.eye(60) - 0.9 * scale[:, None] * a * scale, seeds)
  from_features = diffusion.diffuse(x, seeds, alpha=0.9, iterations=100, k=5, knn_engine='jax')
  np.testing.assert_allclose(from_features, expected, rtol=1e-4, atol=1e-5)
  graph = diffusion.build_graph(*knn.knn_search(x, 5, engine='jax'))
  np.testing.assert_array_equal(
      diffusion.diffuse(graph, seeds, alpha=0.9, iterations=100), from_features
  )
