"""fast_conv: the matmul path gives flax's plain Conv values and gradients; paths by platform.

The oneDNN path has its own tests (test_onednn_conv.py).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groundwork.encoders import fast_conv, onednn_conv


def _uses_custom_vjp(fn, *args) -> bool:
  # A fresh wrapper each time: make_jaxpr would otherwise reuse an earlier trace.
  return 'custom_vjp_call' in str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


def _pair(features, kernel, use_bias, padding='SAME', strides=1):
  common = dict(features=features, kernel_size=(kernel, kernel), use_bias=use_bias,
                padding=padding, strides=strides)
  return nn.Conv(**common), nn.Conv(**common, conv_general_dilated=fast_conv.conv_general_dilated)


def _values_and_grads(module, variables, x):
  def loss(params, x):
    y = module.apply({'params': params}, x)
    # A non-uniform cotangent, so every tap of the weight gradient is exercised.
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
  y = module.apply(variables, x)
  grads = jax.grad(loss, argnums=(0, 1))(variables['params'], x)
  return y, grads


@pytest.mark.parametrize('kernel,use_bias,padding', [
    (3, False, 'SAME'), (3, True, 'SAME'), (1, False, 'SAME'), (1, True, 'SAME'),
    (3, True, 'VALID'), (3, False, ((1, 1), (1, 1))), (3, False, ((0, 2), (1, 0)))])
def test_matmul_path_matches_plain_conv(monkeypatch, kernel, use_bias, padding):
  monkeypatch.setenv('GROUNDWORK_CONV', 'matmul')
  plain, fast = _pair(5, kernel, use_bias, padding)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 7, 3))
  variables = plain.init(jax.random.PRNGKey(1), x)
  fast_variables = fast.init(jax.random.PRNGKey(1), x)
  # Same names, shapes and initial values: checkpoints are interchangeable.
  assert jax.tree_util.tree_map(np.shape, variables) == jax.tree_util.tree_map(
      np.shape, fast_variables)
  assert _uses_custom_vjp(lambda v, x: fast.apply(v, x), variables, x)
  y_plain, (gp_plain, gx_plain) = _values_and_grads(plain, variables, x)
  y_fast, (gp_fast, gx_fast) = _values_and_grads(fast, variables, x)
  np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gx_fast, gx_plain, rtol=1e-5, atol=1e-6)
  for name in gp_plain:
    np.testing.assert_allclose(gp_fast[name], gp_plain[name], rtol=1e-5, atol=1e-6)


def test_weight_gradient_of_one_tap_by_hand(monkeypatch):
  # y = conv(x, w) with a 1x1 kernel is x @ w per pixel, so d sum(y) / dw = sum of x over pixels.
  monkeypatch.setenv('GROUNDWORK_CONV', 'matmul')
  x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
  w = jnp.ones((1, 1, 2, 4))
  grad = jax.grad(lambda w: fast_conv.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum())(w)
  expected = np.broadcast_to(np.asarray(x).sum(axis=(0, 1, 2))[:, None], (2, 4))
  np.testing.assert_allclose(grad[0, 0], expected)


def test_strided_conv_falls_back_to_plain(monkeypatch):
  monkeypatch.setenv('GROUNDWORK_CONV', 'matmul')
  plain, fast = _pair(4, 3, False, strides=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
  variables = plain.init(jax.random.PRNGKey(1), x)
  assert not _uses_custom_vjp(lambda v, x: fast.apply(v, x), variables, x)
  np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), rtol=1e-6)


def test_selection_follows_platform(monkeypatch):
  assert fast_conv.select_impl('cpu', onednn_ready=True) == 'onednn'
  assert fast_conv.select_impl('gpu', onednn_ready=True) == 'xla'
  assert fast_conv.select_impl('cpu') == 'matmul'
  assert fast_conv.select_impl('gpu') == 'xla'
  assert fast_conv.select_impl('tpu') == 'xla'
  assert fast_conv.select_impl('cpu', 'xla') == 'xla'
  assert fast_conv.select_impl('gpu', 'matmul') == 'matmul'
  with pytest.raises(ValueError, match='GROUNDWORK_CONV'):
    fast_conv.select_impl('cpu', 'fast')

  # Wide enough for 'auto' (64 * 128 channels); only traced, never compiled.
  _, fast = _pair(128, 1, False)
  x = jnp.ones((1, 2, 2, 64))
  variables = fast.init(jax.random.PRNGKey(0), x)
  apply = lambda v, x: fast.apply(v, x)
  monkeypatch.delenv('GROUNDWORK_CONV', raising=False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  # Where oneDNN is not built, 'auto' on CPU is the matmul path (with a warning).
  monkeypatch.setattr(onednn_conv, 'available', lambda: False)
  monkeypatch.setattr(fast_conv.onednn_conv, 'warn_unavailable', lambda: None)
  assert fast_conv.current_impl() == 'matmul'
  assert _uses_custom_vjp(apply, variables, x)
  # Narrower kernels keep XLA's backward under the matmul path's 'auto'.
  _, narrow = _pair(64, 1, False)
  narrow_vars = narrow.init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 64)))
  assert not _uses_custom_vjp(lambda v, x: narrow.apply(v, x), narrow_vars, jnp.ones((1, 2, 2, 64)))
  for backend in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert fast_conv.current_impl() == 'xla'
    assert not _uses_custom_vjp(apply, variables, x)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setenv('GROUNDWORK_CONV', 'xla')
  assert not _uses_custom_vjp(apply, variables, x)
