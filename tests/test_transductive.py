"""Transductive few-shot inference: propagation in an episode against a dense replica and by
hand, its episodes paired with the prototypes', and Lake's runs with and without assignment."""

import math
import types

import jax.numpy as jnp
import numpy as np
import pytest

from fsl import transductive
from fsl.episodic_evaluation import episode_accuracies, lake_oneshot_error, paired_difference


def _replica_scores(support, query, support_labels, n_way, k, gamma=3.0, alpha=0.99, mass=True):
  """Dense float64 replica: kNN lists of the L2-normalised nodes (self excluded), A of
  s^gamma clipped at 0 on them, W = D^-1/2 (A + A^T) D^-1/2, one-hot seeds on every support
  node, exact solve, query images scored by the sum over their nodes, each class's scores
  then divided by their positive total (`mass`)."""
  positions = support.shape[1]
  nodes = np.concatenate([support, query]).reshape(-1, support.shape[-1]).astype(np.float64)
  nodes /= np.linalg.norm(nodes, axis=1, keepdims=True)
  s = nodes @ nodes.T
  np.fill_diagonal(s, -np.inf)
  n = len(nodes)
  a = np.zeros((n, n))
  for i in range(n):
    for j in np.argsort(-s[i], kind='stable')[:k]:
      a[i, j] = max(s[i, j], 0.0) ** gamma
  a = a + a.T
  scale = 1 / np.sqrt(a.sum(axis=1))
  w = scale[:, None] * a * scale[None, :]
  y = np.zeros((n, n_way))
  y[np.arange(len(support_labels) * positions), np.repeat(support_labels, positions)] = 1
  z = np.linalg.solve(np.eye(n) - alpha * w, y)
  scores = z[len(support) * positions :].reshape(len(query), positions, n_way).sum(axis=1)
  return scores / np.maximum(scores, 0).sum(axis=0) if mass else scores


def _angles(degrees):
  radians = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(radians), np.sin(radians)], axis=-1).astype(np.float32)


# Class A runs along a chain of directions from its support at 0 degrees to 58; class B sits
# around its support at 90. The last A query is closer to B's support than to A's (58 degrees
# is 32 from B, 58 from A), so prototypes get it wrong; its 2 nearest are the A queries at 44
# and 28 (B's nearest is 34 away), and along the graph it hangs on the chain. Gaps all
# differ: no tie decides a kNN list.
SUPPORT_DEGREES, QUERY_DEGREES = np.array([0, 90]), np.array([13, 28, 44, 58, 92, 97, 103, 110])
SUPPORT = _angles(SUPPORT_DEGREES)[:, None]
QUERY = _angles(QUERY_DEGREES)[:, None]
QUERY_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
PROPAGATION = transductive.Propagation(k=2, gamma=3.0, alpha=0.99, cg_iterations=50)


@pytest.mark.parametrize('mass', [True, False])
def test_pooled_propagation_equals_the_replica_and_follows_the_chain(mass):
  settings = PROPAGATION._replace(class_mass=mass)
  scores = transductive.propagation_scores(
      jnp.asarray(SUPPORT), jnp.asarray(QUERY), jnp.array([0, 1]), 2, settings
  )
  expected = _replica_scores(SUPPORT, QUERY, np.array([0, 1]), 2, k=2, mass=mass)
  np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(scores, axis=1), QUERY_LABELS)
  prototype_cosines = QUERY[:, 0] @ SUPPORT[:, 0].T
  np.testing.assert_array_equal(np.argmax(prototype_cosines, axis=1), [0, 0, 0, 1, 1, 1, 1, 1])


def test_class_mass_keeps_a_dense_class_from_taking_every_query():
  # Class A's queries crowd around its support (0 to 5.3 degrees), class B's spread out (50 to
  # 79 from 0, B's support at 90). With k = 6 of the 10 nodes the small graph is well mixed:
  # Z is mostly its stationary part, largest for A's high-degree support, and every query
  # goes to A; divided by each class's total over the queries, every query is right.
  query = _angles([1, 2.2, 3.5, 4.1, 5.3, 50, 68, 79])[:, None]
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
  for mass, predicted in ((False, np.zeros(8)), (True, labels)):
    settings = transductive.Propagation(k=6, alpha=0.99, class_mass=mass)
    scores = transductive.propagation_scores(
        jnp.asarray(SUPPORT), jnp.asarray(query), jnp.array([0, 1]), 2, settings
    )
    expected = _replica_scores(SUPPORT, query, np.array([0, 1]), 2, k=6, mass=mass)
    np.testing.assert_allclose(scores, expected, rtol=2e-3, atol=1e-6)
    np.testing.assert_array_equal(np.argmax(scores, axis=1), predicted)


def test_dense_propagation_sums_the_positions_of_each_query():
  # Two positions per image: the image's direction and one turned by 2.3 + 1.37 i degrees
  # (no two gaps alike, so no near-tie decides a kNN list).
  degrees = np.r_[SUPPORT_DEGREES, QUERY_DEGREES]
  degrees = np.stack([degrees, degrees + 2.3 + 1.37 * np.arange(10)], axis=1)
  images = _angles(degrees)
  support, query = images[:2], images[2:]
  settings = transductive.Propagation(k=3, alpha=0.99, cg_iterations=80)
  scores = transductive.propagation_scores(
      jnp.asarray(support), jnp.asarray(query), jnp.array([0, 1]), 2, settings
  )
  expected = _replica_scores(support, query, np.array([0, 1]), 2, k=3)
  np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(scores, axis=1), QUERY_LABELS)


def test_episodes_pair_propagation_with_prototypes():
  features = np.concatenate([SUPPORT[:, 0], QUERY[:, 0]])
  episodes = types.SimpleNamespace(
      support_idx=np.array([[0, 1]] * 2, np.int32),
      query_idx=np.array([[2, 3, 4, 5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 2, 3, 4]], np.int32),
      support_labels=np.array([[0, 1]] * 2, np.int32),
      query_labels=np.array([QUERY_LABELS, np.roll(QUERY_LABELS, -3)], np.int32),
  )
  inductive = episode_accuracies(features, episodes)
  np.testing.assert_allclose(inductive, [7 / 8, 7 / 8])  # The query at 58 degrees.
  pooled = episode_accuracies(
      features, episodes, transductive='pooled', propagation=PROPAGATION, batch_size=1
  )
  np.testing.assert_allclose(pooled, [1.0, 1.0])
  maps = features[:, None, None, :]  # One position: 'dense' is 'pooled'.
  dense = episode_accuracies(
      features, episodes, maps=maps, transductive='dense', propagation=PROPAGATION
  )
  np.testing.assert_allclose(dense, pooled)
  with pytest.raises(ValueError, match="transductive='graph' is not one of"):
    episode_accuracies(features, episodes, transductive='graph')
  with pytest.raises(ValueError, match='needs the feature maps'):
    episode_accuracies(features, episodes, transductive='dense')


def test_paired_difference_by_hand():
  result = paired_difference(np.array([1.0, 0.5, 0.5]), np.array([1.0, 1.0, 0.5]))
  # Differences 0, 0.5, 0: mean 1/6, population std sqrt(1/12 - 1/36) = sqrt(2) / 6.
  assert result['difference'] == pytest.approx(1 / 6)
  assert result['difference_ci95'] == pytest.approx(1.96 * math.sqrt(2) / 6 / math.sqrt(3))
  assert result['accuracy'] == pytest.approx(5 / 6) and result['episodes'] == 3
  with pytest.raises(ValueError, match='same episodes'):
    paired_difference(np.ones(3), np.ones(4))


def _lake_run(train_degrees, test_degrees, targets):
  as_images = lambda d: _angles(d).reshape(len(d), 1, 1, 2)
  return types.SimpleNamespace(
      train_images=as_images(train_degrees),
      test_images=as_images(test_degrees),
      test_targets=np.array(targets),
  )


def test_lake_assignment_is_one_to_one_and_named():
  # Classes at 0, 45 and 90 degrees; test images at 5 (class 0), 20 (class 1: 20 degrees from
  # class 0, 25 from class 1) and 85 (class 2). The nearest class takes 20 to class 0; the
  # best one-to-one assignment (cosines 0.996 + 0.906 + 0.996 against 0.766 + 0.940 + 0.996
  # for the swap) gives it class 1.
  run = _lake_run([0, 45, 90], [5, 20, 85], [0, 1, 2])
  flatten = lambda x: x.reshape(len(x), -1)
  nearest = lake_oneshot_error(flatten, [run])
  assigned = lake_oneshot_error(flatten, [run], assignment=True)
  assert nearest == {'error': pytest.approx(1 / 3), 'items': 3, 'rule': 'prototypes'}
  assert assigned == {
      'error': 0.0,
      'items': 3,
      'rule': 'prototypes + one-to-one assignment',
  }


def test_lake_propagation_over_train_and_test_images():
  # Test images 10 and 30 degrees apart from each other chain class 0 (at 0) to 30, which
  # prototypes give to class 1 (at 55: 25 degrees away against 30).
  run = _lake_run([0, 55, 110], [15, 30, 100], [0, 0, 2])
  flatten = lambda x: x.reshape(len(x), -1)
  settings = transductive.Propagation(k=2, cg_iterations=50)
  assert lake_oneshot_error(flatten, [run])['error'] == pytest.approx(1 / 3)
  result = lake_oneshot_error(flatten, [run], transductive='pooled', propagation=settings)
  assert result == {'error': 0.0, 'items': 3, 'rule': 'propagation over pooled features'}
  maps = lambda x: np.asarray(x, np.float32)  # [b, 1, 1, 2]: one position per image.
  dense = lake_oneshot_error(maps, [run], transductive='dense', propagation=settings)
  assert dense['error'] == 0.0 and dense['rule'] == 'propagation over dense features'
  with pytest.raises(ValueError, match='needs embed_fn to return feature maps'):
    lake_oneshot_error(flatten, [run], transductive='dense', propagation=settings)


def test_settings_name_the_config_field():
  transductive.check_settings('pooled', transductive.Propagation(k=20), smallest_graph=80)
  transductive.check_settings('none', transductive.Propagation(k=500), smallest_graph=80)
  with pytest.raises(ValueError, match=r"config.eval.transductive='graph' is not one of"):
    transductive.check_settings('graph', transductive.Propagation(), 80)
  with pytest.raises(ValueError, match=r'config.eval.propagation.k=80 must be smaller than the 80'):
    transductive.check_settings('pooled', transductive.Propagation(k=80), 80)
  with pytest.raises(ValueError, match=r'config.eval.propagation.alpha=1.5 must lie in \(0, 1\)'):
    transductive.check_settings('dense', transductive.Propagation(alpha=1.5), 80)


def _eval_config(**changes):
  import ml_collections  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict(
      dict(
          n_way=5,
          shots=(1, 5),
          n_query=15,
          lake=True,
          transductive='pooled',
          propagation=dict(k=10, gamma=3.0, alpha=0.95, cg_iterations=20, class_mass=True),
          lake_assignment=False,
          retrieval=dict(
              enabled=True, k=50, query_k=10, gamma=3.0, alpha=0.99, cg_iterations=20, mutual=True
          ),
      )
  )
  config.update_from_flattened_dict(changes)
  return config


def test_inference_rules_from_the_config_and_an_older_one():
  from fsl.episodic_evaluation import inference_rules  # pylint: disable=import-outside-toplevel

  rules = inference_rules(_eval_config())
  assert rules.transductive == 'pooled' and rules.propagation == transductive.Propagation()
  assert rules.retrieval == dict(
      k=50, query_k=10, gamma=3.0, alpha=0.99, cg_iterations=20, mutual=True
  )
  assert inference_rules(_eval_config(**{'retrieval.enabled': False})).retrieval is None
  older = _eval_config()
  for field in ('transductive', 'propagation', 'lake_assignment', 'retrieval'):
    del older[field]
  assert inference_rules(older) == (
      'none',
      transductive.Propagation(),
      False,
      None,
  )


@pytest.mark.parametrize(
    'changes,message',
    [
        ({'n_query': 1}, r'config.eval.propagation.k=10 must be smaller than the 10 nodes'),
        ({'retrieval.query_k': 0}, r'config.eval.retrieval.query_k=0 must be an integer in'),
        ({'propagation.cg_iterations': 0}, r'config.eval.propagation.cg_iterations=0 must be'),
    ],
)
def test_inference_rules_are_checked_naming_the_field(changes, message):
  from fsl.episodic_evaluation import check_inference_rules  # pylint: disable=import-outside-toplevel

  check_inference_rules(_eval_config())
  with pytest.raises(ValueError, match=message):
    check_inference_rules(_eval_config(**changes))


def test_lake_results_name_every_rule():
  from fsl.episodic_evaluation import inference_rules, lake_results  # pylint: disable=import-outside-toplevel

  run = _lake_run([0, 55, 110], [15, 30, 100], [0, 0, 2])
  flatten = lambda x: x.reshape(len(x), -1)
  rules = inference_rules(_eval_config(**{'propagation.k': 2, 'lake_assignment': True}))
  results = lake_results(flatten, None, [run], rules)
  assert {k: v['rule'] for k, v in results.items()} == {
      'lake_oneshot': 'prototypes',
      'lake_oneshot_assignment': 'prototypes + one-to-one assignment',
      'lake_oneshot_transductive_pooled': 'propagation over pooled features',
      'lake_oneshot_transductive_pooled_assignment': (
          'propagation over pooled features + one-to-one assignment'
      ),
  }
  assert results['lake_oneshot'] == lake_oneshot_error(flatten, [run])
