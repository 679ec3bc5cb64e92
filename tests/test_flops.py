"""FLOP counts: padding taps included, gradients only where back-propagation computes them."""

import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from groundwork.encoders import build_encoder

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import flops  # pylint: disable=wrong-import-position


class TwoConvs(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), padding="SAME", use_bias=False)(x)
    x = nn.Conv(6, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)(x)
    return nn.Dense(5, use_bias=False)(x.mean(axis=(1, 2)))


def test_counts_every_tap_and_only_the_gradients_backprop_computes():
  model = TwoConvs()
  x = jnp.zeros((2, 5, 5, 3))
  params = model.init(jax.random.key(0), x)
  forward, step = flops.training_step_flops(model.apply, params, x)
  first = 2 * (2 * 5 * 5 * 4) * 9 * 3  # padding taps counted: 9 per output, border or not
  second = 2 * (2 * 3 * 3 * 6) * 9 * 4
  dense = 2 * (2 * 5) * 6
  assert forward == first + second + dense
  # The first convolution sees the images, which need no gradient: forward + weight gradient.
  assert step == 2 * first + 3 * second + 3 * dense


def test_a_product_of_inputs_alone_costs_its_forward_only():
  w = jnp.ones((4, 3))
  forward, step = flops.training_step_flops(
      lambda p, a, b: a @ b + p, w, jnp.ones((4, 2)), jnp.ones((2, 3))
  )
  assert forward == step == 2 * 4 * 3 * 2


def test_resnet18_at_224_matches_the_published_figure():
  # torchvision's ResNet-18: 1.81 GMACs, of which the 1000-way classifier (absent here) is
  # 0.5 M. Shapes only: nothing is computed.
  model = build_encoder("resnet18", cpu_kernels=False)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(images.shape), train=False)
  )

  def apply(params, batch_stats, x):
    return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

  forward, step = flops.training_step_flops(
      apply, variables["params"], variables["batch_stats"], images
  )
  assert forward / 2 == pytest.approx(1.8136e9, rel=1e-3)
  stem = 2 * (112 * 112 * 64) * 49 * 3
  assert step == 3 * forward - stem


def test_loops_are_refused_with_the_primitive_named():
  def looped(w, x):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=2)[0]

  with pytest.raises(ValueError, match="scan"):
    flops.training_step_flops(looped, jnp.eye(3), jnp.ones((1, 3)))


def test_native_kernels_are_refused():
  def with_ffi(w, x):
    return jax.ffi.ffi_call("some_native_kernel", jax.ShapeDtypeStruct(x.shape, x.dtype))(x @ w)

  with pytest.raises(ValueError, match="FFI call"):
    flops.training_step_flops(with_ffi, jnp.eye(3), jnp.ones((1, 3)))
