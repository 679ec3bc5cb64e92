"""BatchNorm and max_pool: flax's values, gradients, variables and running statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import groundwork_cpu
from groundwork_cpu import layers


def _uses_ffi(fn, *args) -> bool:
  return 'ffi_call' in str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


# ------------------------------------------------------------------------------ BatchNorm


def _pair(**fields):
  return groundwork_cpu.BatchNorm(name='bn', **fields), nn.BatchNorm(name='bn', **fields)


@pytest.mark.parametrize('at_call', [False, True], ids=['field', 'call argument'])
def test_batch_norm_training_matches_flax_values_grads_and_running_stats(at_call):
  x = jax.random.normal(jax.random.key(0), (6, 5, 5, 12)) * 3 + 1
  fields = dict(momentum=0.9, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32)
  call = dict(use_running_average=False) if at_call else {}
  ours, theirs = _pair(**fields, **({} if at_call else dict(use_running_average=False)))
  variables = theirs.init(jax.random.key(1), x, **call)
  # Same variables, same initial values.
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x, **call), variables)
  params = {'scale': jnp.linspace(0.5, 2, 12), 'bias': jnp.linspace(-1, 1, 12)}
  stats = {'mean': jnp.linspace(-1, 1, 12), 'var': jnp.linspace(1, 3, 12)}
  cotangent = jax.random.normal(jax.random.key(2), x.shape)

  def loss(module, params, x):
    y, updates = module.apply(
        {'params': params, 'batch_stats': stats}, x, **call, mutable=['batch_stats']
    )
    return jnp.vdot(nn.leaky_relu(y, 0.1), cotangent), updates

  assert _uses_ffi(lambda p, x: loss(ours, p, x), params, x)
  (value_a, stats_a), grads_a = jax.jit(
      jax.value_and_grad(lambda p, x: loss(ours, p, x), (0, 1), has_aux=True)
  )(params, x)
  (value_b, stats_b), grads_b = jax.value_and_grad(
      lambda p, x: loss(theirs, p, x), (0, 1), has_aux=True
  )(params, x)
  np.testing.assert_allclose(value_a, value_b, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), stats_a, stats_b
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads_a, grads_b
  )


def test_batch_norm_evaluation_is_flax_exactly():
  x = jax.random.normal(jax.random.key(3), (4, 3, 3, 5))
  ours, theirs = _pair(momentum=0.9)
  variables = {
      'params': {'scale': jnp.arange(1.0, 6.0), 'bias': jnp.arange(5.0)},
      'batch_stats': {'mean': jnp.arange(5.0) / 5, 'var': jnp.arange(1.0, 6.0)},
  }
  assert not _uses_ffi(lambda v, x: ours.apply(v, x, use_running_average=True), variables, x)
  np.testing.assert_array_equal(
      ours.apply(variables, x, use_running_average=True),
      theirs.apply(variables, x, use_running_average=True),
  )


@pytest.mark.parametrize('case', ['bfloat16 input', 'bfloat16 result', 'feature axis 1', 'mask'])
def test_batch_norm_other_cases_are_flax_exactly(case):
  x = jax.random.normal(jax.random.key(4), (4, 3, 3, 5))
  fields, call = dict(use_running_average=False), {}
  if case == 'bfloat16 input':
    x = x.astype(jnp.bfloat16)
  elif case == 'bfloat16 result':
    fields['dtype'] = jnp.bfloat16
  elif case == 'feature axis 1':
    fields['axis'] = 1
  else:
    call['mask'] = jnp.arange(x.size).reshape(x.shape) % 3 > 0
  ours, theirs = _pair(**fields)
  variables = theirs.init(jax.random.key(5), x, **call)
  apply = lambda module: module.apply(variables, x, **call, mutable=['batch_stats'])
  assert not _uses_ffi(lambda: apply(ours))
  jax.tree.map(np.testing.assert_array_equal, apply(ours), apply(theirs))


def test_batch_norm_without_scale_and_bias():
  x = jax.random.normal(jax.random.key(6), (8, 3))
  ours, theirs = _pair(use_running_average=False, use_scale=False, use_bias=False)
  variables = theirs.init(jax.random.key(7), x)
  assert 'params' not in variables and 'params' not in ours.init(jax.random.key(7), x)
  (y_a, stats_a), (y_b, stats_b) = (
      m.apply(variables, x, mutable=['batch_stats']) for m in (ours, theirs)
  )
  np.testing.assert_allclose(y_a, y_b, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), stats_a, stats_b)


def test_batch_statistics_outputs_are_differentiable():
  x = jax.random.normal(jax.random.key(8), (4, 3, 3, 5))
  scale, bias = jnp.ones(5), jnp.zeros(5)

  def plain(x):
    mean = x.mean((0, 1, 2))
    return mean, (x * x).mean((0, 1, 2)) - mean * mean

  for which in (1, 2):
    ours = jax.grad(lambda x: layers.batch_norm_train(x, scale, bias, 1e-5)[which].sum())(x)
    np.testing.assert_allclose(ours, jax.grad(lambda x: plain(x)[which - 1].sum())(x), atol=1e-6)


# ------------------------------------------------------------------------------ max-pool


@pytest.mark.parametrize(
    'shape,window,strides,padding',
    [
        ((3, 21, 21, 8), (2, 2), (2, 2), 'VALID'),  # odd size floors, as torch
        ((2, 42, 42, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet-18 stem's
        ((2, 6, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
        ((2, 7, 5, 3), (3, 2), (1, 2), 'SAME'),
        ((1, 6, 6, 2), (2, 2), None, ((1, 0), (0, 1))),  # default strides: 1
    ],
)
def test_max_pool_matches_flax(shape, window, strides, padding):
  x = jax.random.normal(jax.random.key(9), shape)  # continuous: no tied maxima
  ours = lambda x: groundwork_cpu.max_pool(x, window, strides, padding)
  theirs = lambda x: nn.max_pool(x, window, strides, padding)
  assert _uses_ffi(ours, x)
  expected = theirs(x)
  np.testing.assert_array_equal(jax.jit(ours)(x), expected)
  cotangent = jax.random.normal(jax.random.key(10), expected.shape)
  grad = lambda pool: jax.grad(lambda x: jnp.vdot(pool(x), cotangent))(x)
  np.testing.assert_allclose(grad(ours), grad(theirs), atol=1e-6)
  batched = jax.vmap(ours)(jnp.stack([x, -x]))
  np.testing.assert_array_equal(batched[1], theirs(-x))


@pytest.mark.parametrize(
    'window,strides,padding',
    [((2, 2), (2, 2), 'VALID'), ((3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 3), (1, 1), 'SAME')],
)
def test_max_pool_of_other_dtypes_matches_flax(window, strides, padding):
  x = jax.random.normal(jax.random.key(11), (2, 7, 8, 3)).astype(jnp.bfloat16)
  ours = lambda x: groundwork_cpu.max_pool(x, window, strides, padding)
  assert not _uses_ffi(ours, x)
  np.testing.assert_array_equal(ours(x), nn.max_pool(x, window, strides, padding))
  # A sum of distinct weights: the gradient lands on each window's (untied) maximum.
  weights = jnp.arange(1.0, 1.0 + ours(x).size).reshape(ours(x).shape).astype(jnp.bfloat16)
  grad = lambda pool: jax.grad(lambda x: jnp.vdot(pool(x, window, strides, padding), weights))
  x32 = jax.random.normal(jax.random.key(12), x.shape).astype(jnp.bfloat16)
  np.testing.assert_array_equal(grad(groundwork_cpu.max_pool)(x32), grad(nn.max_pool)(x32))


def test_max_pool_windows_oneDNN_cannot_pad_like_flax_stay_on_xla():
  # A pad as wide as the window leaves windows of padding alone: -inf in flax.
  x = jax.random.normal(jax.random.key(13), (1, 4, 4, 2))
  ours = lambda x: groundwork_cpu.max_pool(x, (2, 2), (2, 2), ((2, 0), (0, 0)))
  assert not _uses_ffi(ours, x)
  np.testing.assert_array_equal(ours(x), nn.max_pool(x, (2, 2), (2, 2), ((2, 0), (0, 0))))
  unbatched = jax.random.normal(jax.random.key(14), (5, 5, 2))  # flax adds the batch axis
  np.testing.assert_array_equal(
      groundwork_cpu.max_pool(unbatched, (2, 2), (2, 2)), nn.max_pool(unbatched, (2, 2), (2, 2))
  )


# ------------------------------------------------------------------------------ together


class _TinyNet(nn.Module):
  """Convolutions, BatchNorm and both pools of the encoders, on either set of layers."""

  cpu_kernels: bool

  @nn.compact
  def __call__(self, x, train: bool):
    conv = groundwork_cpu.conv_general_dilated if self.cpu_kernels else jax.lax.conv_general_dilated
    norm = groundwork_cpu.BatchNorm if self.cpu_kernels else nn.BatchNorm
    pool = groundwork_cpu.max_pool if self.cpu_kernels else nn.max_pool
    x = nn.Conv(8, (3, 3), (2, 2), use_bias=False, conv_general_dilated=conv)(x)
    x = nn.relu(
        norm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
        )(x)
    )
    x = pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    x = nn.Conv(8, (3, 3), use_bias=False, conv_general_dilated=conv)(x)
    x = nn.leaky_relu(norm(use_running_average=not train, momentum=0.9)(x), 0.1)
    return pool(x, (2, 2), (2, 2)).mean(axis=(1, 2))


def test_a_training_step_matches_plain_flax():
  # Enough samples per BatchNorm (4 images, >= 2x2 maps) that it does not blow float rounding
  # up: with 2 values per channel it maps both to +-1 whatever their difference.
  x = jax.random.normal(jax.random.key(15), (4, 16, 16, 3))
  ours, plain = _TinyNet(cpu_kernels=True), _TinyNet(cpu_kernels=False)
  variables = plain.init(jax.random.key(16), x, train=False)
  jax.tree.map(
      np.testing.assert_array_equal, ours.init(jax.random.key(16), x, train=False), variables
  )

  def step(model, params, x):
    def loss(params):
      out, updates = model.apply(
          {**variables, 'params': params}, x, train=True, mutable=['batch_stats']
      )
      return jnp.sum(jnp.sin(out)), updates

    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, updates), grads = jax.jit(lambda p, x: step(ours, p, x))(variables['params'], x)
  (value_plain, updates_plain), grads_plain = step(plain, variables['params'], x)
  np.testing.assert_allclose(value, value_plain, rtol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), updates, updates_plain
  )
  # Relative to each gradient's scale: a few elements near zero differ in every digit.
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(want))))
