"""oneDNN BatchNorm and max-pool on CPU: same values, gradients and running statistics as flax."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groundwork.encoders import layers, onednn_conv, onednn_layers

needs_onednn = pytest.mark.skipif(not onednn_layers.available(),
                                  reason=f'oneDNN layers unavailable: {onednn_layers.unavailable_reason()}')


def test_builds_where_the_convolutions_build():
  if onednn_conv.available():
    assert onednn_layers.available(), onednn_layers.unavailable_reason()


@needs_onednn
def test_batch_norm_module_matches_flax_values_grads_and_running_stats():
  x = jax.random.normal(jax.random.key(0), (6, 5, 5, 12)) * 3 + 1
  ours, theirs = layers.CpuTrainBatchNorm(name='bn'), nn.BatchNorm(
      use_running_average=False, momentum=0.9, epsilon=1e-5, name='bn')
  variables = theirs.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
  params = {'scale': jnp.linspace(0.5, 2, 12), 'bias': jnp.linspace(-1, 1, 12)}
  cotangent = jax.random.normal(jax.random.key(2), x.shape)

  def loss(module, params, x):
    y, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              mutable=['batch_stats'])
    return jnp.vdot(nn.leaky_relu(y, 0.1), cotangent), updates

  (value_a, stats_a), grads_a = jax.value_and_grad(loss, (1, 2), has_aux=True)(ours, params, x)
  (value_b, stats_b), grads_b = jax.value_and_grad(loss, (1, 2), has_aux=True)(theirs, params, x)
  np.testing.assert_allclose(value_a, value_b, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), stats_a, stats_b)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads_a, grads_b)


@needs_onednn
def test_batch_norm_statistics_outputs_are_differentiable():
  x = jax.random.normal(jax.random.key(3), (4, 3, 3, 5))
  scale, bias = jnp.ones(5), jnp.zeros(5)

  def plain(x):
    mean = x.mean((0, 1, 2))
    return mean, (x * x).mean((0, 1, 2)) - mean * mean

  for which in (1, 2):
    ours = jax.grad(lambda x: onednn_layers.batch_norm_train(x, scale, bias, 1e-5)[which].sum())(x)
    np.testing.assert_allclose(ours, jax.grad(lambda x: plain(x)[which - 1].sum())(x), atol=1e-6)


@needs_onednn
@pytest.mark.parametrize('shape,window,strides,pads', [
    ((3, 21, 21, 8), (2, 2), (2, 2), ((0, 0), (0, 0))),   # odd size floors, as torch
    ((2, 42, 42, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),   # the ResNet-18 stem's
    ((2, 6, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
])
def test_max_pool_matches_reduce_window(shape, window, strides, pads):
  x = jax.random.normal(jax.random.key(4), shape)  # continuous: no tied maxima
  expected = nn.max_pool(x, window, strides, pads)
  np.testing.assert_array_equal(onednn_layers.max_pool(x, window, strides, pads), expected)
  cotangent = jax.random.normal(jax.random.key(5), expected.shape)
  grad = lambda pool: jax.grad(lambda x: jnp.vdot(pool(x, window, strides, pads), cotangent))(x)
  np.testing.assert_allclose(grad(onednn_layers.max_pool), grad(nn.max_pool), atol=1e-6)
  batched = jax.vmap(lambda x: onednn_layers.max_pool(x, window, strides, pads))(jnp.stack([x, -x]))
  np.testing.assert_array_equal(batched[1], nn.max_pool(-x, window, strides, pads))


def test_plain_path_when_convolutions_are_not_on_onednn(monkeypatch):
  monkeypatch.setenv('GROUNDWORK_CONV', 'xla')
  assert not onednn_layers.enabled()
  assert isinstance(layers.batch_norm(True, jnp.float32, 'bn'), nn.BatchNorm)
