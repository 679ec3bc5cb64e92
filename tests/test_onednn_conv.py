"""oneDNN convolutions on CPU: same values and gradients as XLA's, under jit, grad and vmap."""
import importlib.metadata
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from groundwork import native
from groundwork.encoders import ResNet18Tiny, fast_conv, onednn_conv
from groundwork.encoders.cnn13 import CNN13Tiny

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _should_build() -> bool:
  try:
    importlib.metadata.version('onednn-devel-cpu-gomp')
  except importlib.metadata.PackageNotFoundError:
    return False
  return sys.platform == 'linux' and os.uname().machine == 'x86_64' and bool(shutil.which('g++'))


needs_onednn = pytest.mark.skipif(not onednn_conv.available(),
                                  reason=f'oneDNN path unavailable: {onednn_conv.unavailable_reason()}')


def test_builds_wherever_its_requirements_are_installed():
  # requirements.txt installs oneDNN on x86-64 Linux: there the fast path must not silently
  # fall back to the slow one.
  if _should_build():
    assert onednn_conv.available(), onednn_conv.unavailable_reason()


def _plain(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC,
                                  precision=lax.Precision.HIGHEST)


def _loss(conv, cotangent):
  return lambda x, w: jnp.sum(conv(x, w) * cotangent)


@needs_onednn
@pytest.mark.parametrize('x_shape,w_shape,strides,pads', [
    ((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),      # ResNet-12 / Conv-4
    ((2, 10, 11, 4), (3, 3, 4, 6), (2, 2), ((1, 0), (1, 1))),    # strided, asymmetric pads
    ((3, 8, 8, 4), (1, 1, 4, 8), (2, 2), ((0, 0), (0, 0))),      # ResNet-18 shortcut
    # Output maps small enough for matrix products (onednn_conv.cc `UseMatrixProduct`):
    ((4, 3, 3, 6), (3, 3, 6, 5), (1, 1), ((1, 1), (1, 1))),      # forward, weight gradient
    ((3, 4, 3, 3), (3, 2, 3, 4), (2, 1), ((2, 0), (0, 1))),      # all three, uneven everything
    ((2, 4, 4, 512), (3, 3, 512, 8), (1, 1), ((1, 1), (1, 1))),  # weight gradient, 512 channels
    ((3, 5, 5, 4), (1, 1, 4, 8), (2, 2), ((0, 0), (0, 0))),      # all three, strided 1x1
    ((2, 6, 6, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),     # all three, ResNet-18 6 -> 3
    ((2, 17, 17, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),    # ResNet-18 stem
    ((2, 7, 6, 5), (3, 3, 5, 4), (1, 1), ((0, 0), (0, 0))),      # CNN-13 'VALID'
    ((1, 5, 5, 2), (3, 3, 2, 3), (1, 2), ((4, 0), (0, 3))),      # pads beyond the kernel
])
def test_values_and_gradients_match_xla(x_shape, w_shape, strides, pads):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], x_shape)
  w = jax.random.normal(keys[1], w_shape)
  ours = lambda x, w: onednn_conv.conv(x, w, strides, pads)
  y = jax.jit(ours)(x, w)
  expected = _plain(x, w, strides, pads)
  assert y.shape == expected.shape
  # Rounding grows with the length of the sums (kh * kw * c_in terms per output).
  atol = max(2e-6 * np.sqrt(np.prod(w_shape[:3])), 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=atol)
  cotangent = jax.random.normal(keys[2], y.shape)
  grads = jax.jit(jax.grad(_loss(ours, cotangent), (0, 1)))(x, w)
  expected_grads = jax.grad(_loss(lambda x, w: _plain(x, w, strides, pads), cotangent), (0, 1))(x, w)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=10 * atol)


@needs_onednn
def test_weight_gradient_of_a_1x1_kernel_by_hand():
  # With a 1x1 kernel y = x @ w per pixel, so d sum(y) / dw[c, :] = sum of x[..., c].
  x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
  grad = jax.grad(lambda w: onednn_conv.conv(x, w, (1, 1), ((0, 0), (0, 0))).sum())(
      jnp.ones((1, 1, 2, 4)))
  expected = np.broadcast_to(np.asarray(x).sum(axis=(0, 1, 2))[:, None], (2, 4))
  np.testing.assert_allclose(grad[0, 0], expected)


@needs_onednn
def test_vmap_over_kernels_and_inputs():
  # Implanting vmaps over episodes, each with its own kernels; evaluation shares one kernel.
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (3, 2, 6, 6, 4))
  w = jax.random.normal(keys[1], (3, 3, 3, 4, 5))
  pads = ((1, 1), (1, 1))
  ours = jax.vmap(lambda x, w: onednn_conv.conv(x, w, (1, 1), pads))
  plain = jax.vmap(lambda x, w: _plain(x, w, (1, 1), pads))
  np.testing.assert_allclose(jax.jit(ours)(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  shared = jax.vmap(lambda x: onednn_conv.conv(x, w[0], (1, 1), pads))(x)
  np.testing.assert_allclose(shared, jax.vmap(lambda x: _plain(x, w[0], (1, 1), pads))(x),
                             rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(keys[2], (3, 2, 6, 6, 5))
  grads = jax.grad(_loss(ours, cotangent), (0, 1))(x, w)
  expected = jax.grad(_loss(plain, cotangent), (0, 1))(x, w)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize('encoder,size', [(ResNet18Tiny, 64), (CNN13Tiny, 32)],
                         ids=['resnet18', 'cnn13'])
def test_encoder_step_matches_xla_path(monkeypatch, encoder, size):
  # Strided convolutions, 1x1 shortcuts, the 7x7 stem, 'VALID' pads and BatchNorm around them.
  # Enough samples per BatchNorm (4 images, >= 2x2 maps) that it does not blow float rounding
  # up: with 2 values per channel it maps both to +-1 whatever their difference.
  model = encoder()
  x = jax.random.normal(jax.random.key(2), (4, size, size, 3))
  monkeypatch.setenv('GROUNDWORK_CONV', 'xla')
  variables = model.init(jax.random.key(3), x, train=False)

  def loss(params, x):
    (_, pooled), _ = model.apply({**variables, 'params': params}, x, train=True,
                                 mutable=['batch_stats'], rngs={'dropout': jax.random.key(4)})
    return jnp.sum(jnp.sin(pooled))

  results = {}
  for impl in ('xla', 'onednn'):
    monkeypatch.setenv('GROUNDWORK_CONV', impl)
    jaxpr = str(jax.make_jaxpr(lambda p, x: loss(p, x))(variables['params'], x))
    assert ('ffi_call' in jaxpr) == (impl == 'onednn')
    results[impl] = jax.jit(jax.value_and_grad(loss, (0, 1)))(variables['params'], x)
  (value, grads), (value_xla, grads_xla) = results['onednn'], results['xla']
  np.testing.assert_allclose(value, value_xla, rtol=1e-5)
  # Relative to each gradient's scale (a few elements near zero differ in every digit), and
  # absolute for gradients that are zero but for rounding (a bias just before BatchNorm,
  # whose BatchNorm now runs on oneDNN too: ~6e-6 there).
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_xla)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(want))) + 2e-5)


@needs_onednn
def test_only_float32_nhwc_undilated_convolutions_take_the_oneDNN_path(monkeypatch):
  monkeypatch.setenv('GROUNDWORK_CONV', 'onednn')
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 3))

  def uses_ffi(x, w, **kwargs):
    conv = lambda x, w: fast_conv.conv_general_dilated(x, w, (1, 1), 'SAME', **kwargs)
    return 'ffi_call' in str(jax.make_jaxpr(conv)(x, w))

  assert uses_ffi(x, w, dimension_numbers=NHWC)
  assert not uses_ffi(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), dimension_numbers=NHWC)
  assert not uses_ffi(x, w, dimension_numbers=NHWC, rhs_dilation=(2, 2))
  assert not uses_ffi(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1),
                      dimension_numbers=('NCHW', 'OIHW', 'NCHW'))


def test_selection_needs_the_library(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(onednn_conv, 'available', lambda: False)
  monkeypatch.setattr(onednn_conv, 'unavailable_reason', lambda: 'no compiler (test)')
  monkeypatch.setenv('GROUNDWORK_CONV', 'onednn')
  with pytest.raises(RuntimeError, match='no compiler'):
    fast_conv.current_impl()
  monkeypatch.delenv('GROUNDWORK_CONV')
  with pytest.warns(UserWarning, match='no compiler'):
    onednn_conv.warn_unavailable.cache_clear()
    assert fast_conv.current_impl() == 'matmul'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(onednn_conv, 'available', lambda: pytest.fail('built on GPU'))
  assert fast_conv.current_impl() == 'xla'


@needs_onednn
def test_build_is_cached_and_redone_when_the_source_changes(tmp_path):
  source = tmp_path / 'onednn_conv.cc'
  shutil.copy(onednn_conv.LIBRARY.source, source)
  shutil.copy(onednn_conv.LIBRARY.source.with_name('onednn_common.h'), tmp_path)
  library = native.FfiLibrary(source, onednn_conv.LIBRARY.handlers, 'a copy')
  built = library.build()
  assert built.parent == tmp_path and built.exists()
  first = built.stat().st_mtime_ns
  assert library.build().stat().st_mtime_ns == first
  os.utime(source, ns=(first + 10**9, first + 10**9))
  assert library.build().stat().st_mtime_ns > first


def test_missing_onednn_names_what_to_install(monkeypatch, tmp_path):
  monkeypatch.delenv('ONEDNN_ROOT', raising=False)
  monkeypatch.setattr(native.sys, 'prefix', str(tmp_path))
  monkeypatch.setattr(native.sysconfig, 'get_config_var', lambda name: str(tmp_path))
  with pytest.raises(FileNotFoundError, match='onednn-devel-cpu-gomp'):
    onednn_conv.LIBRARY.build(force=True)
