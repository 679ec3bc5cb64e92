"""Mean Teacher: EMA teacher, ramps, learning-rate schedule and consistency costs."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from semisup import mean_teacher as mt  # noqa: E402


def test_ema_update_uses_the_true_mean_first_then_the_decay():
  teacher = {'w': jnp.array([4.0, 0.0]), 'b': {'c': jnp.array(2.0)}}
  student = {'w': jnp.array([0.0, 8.0]), 'b': {'c': jnp.array(6.0)}}
  first = mt.ema_update(teacher, student, 1, 0.97)  # decay min(1 - 1/2, 0.97) = 0.5.
  np.testing.assert_allclose(first['w'], [2.0, 4.0])
  np.testing.assert_allclose(first['b']['c'], 4.0)
  # Step 9: min(1 - 1/10, 0.97) = 0.9; step 999: 0.97.
  np.testing.assert_allclose(mt.ema_update(teacher, student, 9, 0.97)['w'], [3.6, 0.8], rtol=1e-6)
  late = jax.jit(mt.ema_update, static_argnums=3)(teacher, student, jnp.int32(999), 0.97)
  np.testing.assert_allclose(late['w'], [0.97 * 4.0, 0.03 * 8.0], rtol=1e-6)
  # Step 0: decay 1 - 1/1 = 0, the teacher becomes the student.
  np.testing.assert_allclose(mt.ema_update(teacher, student, 0, 0.97)['w'], [0.0, 8.0])


def test_consistency_weight_ramp_values():
  weights = [float(mt.consistency_weight(epoch, 100.0, 5)) for epoch in range(7)]
  np.testing.assert_allclose(weights, [0.674, 4.076, 16.53, 44.93, 81.87, 100.0, 100.0], rtol=1e-3)
  assert float(mt.sigmoid_rampup(3, 0)) == 1.0
  assert float(mt.sigmoid_rampup(-1, 5)) == pytest.approx(np.exp(-5.0))


def test_mean_teacher_learning_rate_schedule():
  lr = lambda e, **kw: float(mt.mean_teacher_lr(e, 0.2, **kw))
  assert lr(0.0) == pytest.approx(0.2)
  assert lr(105.0) == pytest.approx(0.1)
  assert lr(210.0) == pytest.approx(0.0, abs=1e-8)
  assert lr(180.0) == pytest.approx(0.2 * 0.5 * (np.cos(np.pi * 180 / 210) + 1), rel=1e-5)
  # Linear warm-up from initial_lr 0.02 over 5 epochs, times the cosine.
  expected = (0.5 * (0.2 - 0.02) + 0.02) * 0.5 * (np.cos(np.pi * 2.5 / 210) + 1)
  assert lr(2.5, initial_lr=0.02, rampup_epochs=5) == pytest.approx(expected, rel=1e-5)
  assert lr(300.0, rampdown_epochs=0) == pytest.approx(0.2)
  with pytest.raises(ValueError, match='epoch=211'):
    lr(211)


def test_softmax_mse_by_hand_and_no_gradient_to_the_teacher():
  student = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0]])
  teacher = jnp.array([[np.log(3.0), 0.0], [np.log(3.0), 0.0]])
  # Row 0: (0.5 - 0.75)^2 and (0.5 - 0.25)^2; row 1: 0. Mean over 4 entries.
  np.testing.assert_allclose(mt.softmax_mse(student, teacher), 2 * 0.0625 / 4, rtol=1e-6)
  grad_teacher = jax.grad(lambda t: mt.softmax_mse(student, t))(teacher)
  np.testing.assert_array_equal(grad_teacher, 0.0)
  assert np.abs(jax.grad(lambda s: mt.softmax_mse(s, teacher))(student)).sum() > 0


def test_logit_distance_by_hand_with_gradients_both_ways():
  a = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  b = jnp.zeros((2, 2))
  np.testing.assert_allclose(mt.logit_distance(a, b), (1 + 4) / 4)
  grad_a, grad_b = jax.grad(mt.logit_distance, argnums=(0, 1))(a, b)
  np.testing.assert_allclose(grad_a, [[0.5, 1.0], [0.0, 0.0]])
  np.testing.assert_allclose(grad_b, -grad_a)
