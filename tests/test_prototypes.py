"""Imprinted prototypes and cosine scoring on toy points."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fsl.prototypes import classify_by_prototypes, dense_scores, imprint_prototypes


def test_prototype_is_normalised_mean_of_normalised_features():
  # Class 0: (3, 4) and (0, 2) normalise to (0.6, 0.8) and (0, 1); mean (0.3, 0.9).
  # Class 1: a single (-5, 0) -> (-1, 0). The norm of a support feature does not matter.
  features = jnp.array([[3.0, 4.0], [-5.0, 0.0], [0.0, 2.0]])
  prototypes = imprint_prototypes(features, jnp.array([0, 1, 0]), n_way=2)
  norm = math.sqrt(0.3**2 + 0.9**2)
  np.testing.assert_allclose(prototypes, [[0.3 / norm, 0.9 / norm], [-1.0, 0.0]], rtol=1e-6)


def test_queries_go_to_most_cosine_similar_prototype():
  prototypes = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  queries = jnp.array([[2.0, 1.0], [0.1, 3.0], [-4.0, -1.0]])
  scores = classify_by_prototypes(queries, prototypes)
  s5, s17 = math.sqrt(5), math.sqrt(17)
  expected = [
      [2 / s5, 1 / s5, -2 / s5],
      [0.1 / math.sqrt(9.01), 3 / math.sqrt(9.01), -0.1 / math.sqrt(9.01)],
      [-4 / s17, -1 / s17, 4 / s17],
  ]
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  np.testing.assert_array_equal(jnp.argmax(scores, axis=-1), [0, 1, 2])


def test_dense_scores_average_position_cosines():
  prototypes = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # One query, 1x2 map: positions (1, 0) and (1, 1). Cosines: (1, 0) and (1/sqrt2, 1/sqrt2).
  maps = jnp.array([[[[1.0, 0.0], [1.0, 1.0]]]])
  r = 1 / math.sqrt(2)
  np.testing.assert_allclose(dense_scores(maps, prototypes), [[(1 + r) / 2, r / 2]], rtol=1e-6)
  # A constant map scores like its pooled feature.
  constant = jnp.broadcast_to(jnp.array([2.0, 1.0]), (1, 3, 3, 2))
  np.testing.assert_allclose(
      dense_scores(constant, prototypes),
      classify_by_prototypes(jnp.array([[2.0, 1.0]]), prototypes),
      rtol=1e-6,
  )


def test_prototypes_vmap_over_episodes_and_empty_class_is_zero():
  features = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  labels = jnp.array([[0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
  batched = jax.vmap(imprint_prototypes, in_axes=(0, 0, None))(features, labels, 2)
  for e in range(3):
    np.testing.assert_allclose(batched[e], imprint_prototypes(features[e], labels[e], 2), rtol=1e-6)
  np.testing.assert_array_equal(batched[2, 1], np.zeros(5))
