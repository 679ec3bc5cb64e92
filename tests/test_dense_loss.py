"""Dense and GAP losses against hand computations; the cosine classifier."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl.cosine_classifier import CosineClassifier
from fsl.dense_loss import dense_loss, gap_loss


def _ce(logits, label):
  return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_dense_loss_equals_hand_computation_on_2x2_map():
  # Image 0 (label 1) and image 1 (label 0), 2x2 positions, 2 classes.
  logits = np.array(
      [
          [[[1.0, 2.0], [0.0, 0.0]], [[3.0, -1.0], [0.5, 0.25]]],
          [[[2.0, 0.0], [1.0, 1.0]], [[-2.0, 1.0], [0.0, 4.0]]],
      ],
      np.float32,
  )
  labels = np.array([1, 0])
  terms = [_ce(logits[b, i, j], labels[b]) for b in range(2) for i in range(2) for j in range(2)]
  expected = sum(terms) / 8
  # e.g. first term: log(e^1 + e^2) - 2 = 0.31326.
  assert terms[0] == pytest.approx(0.3132617, abs=1e-6)
  assert float(dense_loss(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(
      expected, rel=1e-6
  )


def test_gap_loss_equals_hand_computation():
  logits = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], np.float32)
  expected = (_ce(logits[0], 2) + _ce(logits[1], 0)) / 2  # (0.40761 + log 3) / 2
  assert float(gap_loss(jnp.asarray(logits), jnp.array([2, 0]))) == pytest.approx(
      expected, rel=1e-6
  )


def test_dense_equals_gap_on_1x1_map():
  features = jax.random.normal(jax.random.PRNGKey(0), (4, 1, 1, 6))
  labels = jnp.array([0, 2, 1, 2])
  head = CosineClassifier(num_classes=3)
  params = head.init(jax.random.PRNGKey(1), features)
  dc = dense_loss(head.apply(params, features), labels)
  gap = gap_loss(head.apply(params, features.mean(axis=(1, 2))), labels)
  np.testing.assert_allclose(dc, gap, rtol=1e-6)


def test_cosine_classifier_is_scaled_cosine():
  head = CosineClassifier(num_classes=2, scale_init=10.0)
  params = {'params': {'weight': jnp.array([[1.0, 0.0], [0.0, 2.0]]), 'scale': jnp.array(10.0)}}
  # Feature (3, 4): cosines 0.6 to class 0 (x-axis) and 0.8 to class 1 (y-axis); norm ignored.
  logits = head.apply(params, jnp.array([[3.0, 4.0], [30.0, 40.0]]))
  np.testing.assert_allclose(logits, [[6.0, 8.0], [6.0, 8.0]], rtol=1e-6)
  init = head.init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 5)))
  assert float(init['params']['scale']) == 10.0
  assert head.apply(init, jnp.ones((1, 2, 2, 5))).shape == (1, 2, 2, 2)


def test_losses_reject_wrong_label_shape():
  with pytest.raises(ValueError, match='one per image'):
    dense_loss(jnp.zeros((2, 2, 2, 3)), jnp.zeros((2, 2, 2), jnp.int32))
  with pytest.raises(ValueError, match=r'\[B, h, w, K\]'):
    dense_loss(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32))
