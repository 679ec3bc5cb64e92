"""conv_general_dilated: lax's values and gradients, on oneDNN, under jit, grad and vmap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import groundwork_cpu

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax(x, w, strides, pads):
  return lax.conv_general_dilated(
      x, w, strides, pads, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST
  )


def _ours(x, w, strides, pads):
  return groundwork_cpu.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


def _uses_ffi(fn, *args) -> bool:
  # A fresh wrapper each time: make_jaxpr would otherwise reuse an earlier trace.
  return 'ffi_call' in str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


def _loss(conv, cotangent):
  return lambda x, w: jnp.sum(conv(x, w) * cotangent)


@pytest.mark.parametrize(
    'x_shape,w_shape,strides,pads',
    [
        ((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),  # ResNet-12 / Conv-4
        ((2, 10, 11, 4), (3, 3, 4, 6), (2, 2), ((1, 0), (1, 1))),  # strided, asymmetric pads
        ((3, 8, 8, 4), (1, 1, 4, 8), (2, 2), ((0, 0), (0, 0))),  # ResNet-18 shortcut
        # Output maps small enough for the blocked layout and the patch product (onednn_conv.cc
        # `UseBlocked`, `UseMatrixProduct`):
        ((4, 3, 3, 6), (3, 3, 6, 5), (1, 1), ((1, 1), (1, 1))),  # forward, weight gradient
        ((3, 4, 3, 3), (3, 2, 3, 4), (2, 1), ((2, 0), (0, 1))),  # all three, uneven everything
        ((2, 4, 4, 512), (3, 3, 512, 8), (1, 1), ((1, 1), (1, 1))),  # weight gradient, 512 channels
        ((3, 5, 5, 4), (1, 1, 4, 8), (2, 2), ((0, 0), (0, 0))),  # all three, strided 1x1
        ((2, 6, 6, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),  # all three, ResNet-18 6 -> 3
        ((2, 5, 5, 4), (3, 3, 4, 4), (1, 1), ((1, 1), (1, 1))),  # blocked layout, primitive
        ((2, 17, 17, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),  # ResNet-18 stem
        ((2, 7, 6, 5), (3, 3, 5, 4), (1, 1), ((0, 0), (0, 0))),  # CNN-13 'VALID'
        ((1, 5, 5, 2), (3, 3, 2, 3), (1, 2), ((4, 0), (0, 3))),  # pads beyond the kernel
    ],
)
def test_values_and_gradients_match_lax(x_shape, w_shape, strides, pads):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], x_shape)
  w = jax.random.normal(keys[1], w_shape)
  ours = lambda x, w: _ours(x, w, strides, pads)
  assert _uses_ffi(ours, x, w)
  y = jax.jit(ours)(x, w)
  expected = _lax(x, w, strides, pads)
  assert y.shape == expected.shape
  # Rounding grows with the length of the sums (kh * kw * c_in terms per output).
  atol = max(2e-6 * np.sqrt(np.prod(w_shape[:3])), 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=atol)
  cotangent = jax.random.normal(keys[2], y.shape)
  grads = jax.jit(jax.grad(_loss(ours, cotangent), (0, 1)))(x, w)
  expected_grads = jax.grad(_loss(lambda x, w: _lax(x, w, strides, pads), cotangent), (0, 1))(x, w)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=10 * atol)


def test_weight_gradient_of_a_1x1_kernel_by_hand():
  # With a 1x1 kernel y = x @ w per pixel, so d sum(y) / dw[c, :] = sum of x[..., c].
  x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
  grad = jax.grad(lambda w: _ours(x, w, (1, 1), 'VALID').sum())(jnp.ones((1, 1, 2, 4)))
  expected = np.broadcast_to(np.asarray(x).sum(axis=(0, 1, 2))[:, None], (2, 4))
  np.testing.assert_allclose(grad[0, 0], expected)


def test_vmap_over_kernels_and_inputs():
  # Implanting vmaps over episodes, each with its own kernels; evaluation shares one kernel.
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (3, 2, 6, 6, 4))
  w = jax.random.normal(keys[1], (3, 3, 3, 4, 5))
  pads = ((1, 1), (1, 1))
  ours = jax.vmap(lambda x, w: _ours(x, w, (1, 1), pads))
  plain = jax.vmap(lambda x, w: _lax(x, w, (1, 1), pads))
  np.testing.assert_allclose(jax.jit(ours)(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  shared = jax.vmap(lambda x: _ours(x, w[0], (1, 1), pads))(x)
  np.testing.assert_allclose(
      shared, jax.vmap(lambda x: _lax(x, w[0], (1, 1), pads))(x), rtol=1e-5, atol=1e-5
  )
  cotangent = jax.random.normal(keys[2], (3, 2, 6, 6, 5))
  grads = jax.grad(_loss(ours, cotangent), (0, 1))(x, w)
  expected = jax.grad(_loss(plain, cotangent), (0, 1))(x, w)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    'kernel,strides,padding,use_bias',
    [
        (3, 1, 'SAME', True),
        (3, 2, 'SAME', False),
        (1, 2, 'VALID', False),
        (3, 1, ((0, 2), (1, 0)), True),
        (3, 1, 1, False),
    ],
)
def test_flax_conv_with_it_has_the_same_parameters_values_and_gradients(
    kernel, strides, padding, use_bias
):
  common = dict(
      features=5, kernel_size=(kernel, kernel), strides=strides, padding=padding, use_bias=use_bias
  )
  plain = nn.Conv(**common)
  ours = nn.Conv(**common, conv_general_dilated=groundwork_cpu.conv_general_dilated)
  x = jax.random.normal(jax.random.key(2), (2, 7, 6, 3))
  variables = plain.init(jax.random.key(3), x)
  # Same names, shapes and initial values: checkpoints are interchangeable.
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(3), x), variables)
  assert _uses_ffi(ours.apply, variables, x)

  def loss(module, params, x):
    y = module.apply({'params': params}, x)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

  np.testing.assert_allclose(
      ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5
  )
  got = jax.grad(lambda p, x: loss(ours, p, x), (0, 1))(variables['params'], x)
  want = jax.grad(lambda p, x: loss(plain, p, x), (0, 1))(variables['params'], x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def _nchw(x, w):
  return x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)


@pytest.mark.parametrize(
    'case',
    [
        'bfloat16',
        'rhs dilation',
        'lhs dilation',
        'NCHW',
        'default layout',
        'groups',
        'negative pads',
    ],
)
def test_everything_else_goes_to_lax_unchanged(case):
  x = jax.random.normal(jax.random.key(4), (1, 6, 6, 4))
  w = jax.random.normal(jax.random.key(5), (3, 3, 4, 2))
  padding, kwargs = 'SAME', dict(dimension_numbers=NHWC)
  if case == 'bfloat16':
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  elif case == 'rhs dilation':
    kwargs['rhs_dilation'] = (2, 2)
  elif case == 'lhs dilation':  # lax wants explicit pads here
    padding, kwargs['lhs_dilation'] = ((1, 1), (1, 1)), (2, 2)
  elif case == 'NCHW':
    x, w = _nchw(x, w)
    kwargs['dimension_numbers'] = ('NCHW', 'OIHW', 'NCHW')
  elif case == 'default layout':  # lax's default is NCHW / OIHW
    x, w = _nchw(x, w)
    kwargs['dimension_numbers'] = None
  elif case == 'groups':
    w = w[:, :, :2]
    kwargs['feature_group_count'] = 2
  else:
    padding = ((-1, 1), (1, 1))
  ours = lambda x, w: groundwork_cpu.conv_general_dilated(x, w, (1, 1), padding, **kwargs)
  assert not _uses_ffi(ours, x, w)
  np.testing.assert_array_equal(
      ours(x, w), lax.conv_general_dilated(x, w, (1, 1), padding, **kwargs)
  )
