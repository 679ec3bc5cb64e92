"""Encoders: exact parameter counts, shapes, layer semantics, DropBlock, bf16, injected layers,
registry.

Full-size networks are only traced (jax.eval_shape); real computation uses tiny widths.
"""

import functools
import importlib.util
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from groundwork import backend
from groundwork.encoders import (
    CNN13,
    CNN13Tiny,
    Conv4,
    Conv4Block,
    ResNet12,
    ResNet12Block,
    ResNet12Tiny,
    ResNet12Wide,
    ResNet18,
    ResNet18Tiny,
    build_encoder,
    encoder_names,
)
from groundwork.encoders.layers import (
    DropBlock,
    TorchLinear,
    WeightNormConv,
    WeightNormDense,
    block_mask_from_seeds,
    drop_block,
    dropblock_gamma,
)


# 'rbg' keys: random numbers compile several times faster than with threefry on CPU.
def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


RNGS = {"params": _key(0), "dropout": _key(1)}


# Whole-network jit compiles faster than eager mode's one compile per operation; caching
# the jitted function per (model, mode) compiles each network once.
@functools.cache
def _jitted(model: nn.Module, train: bool):
  def apply(variables, x, key):
    if not train:
      return model.apply(variables, x, False, rngs={"dropout": key})
    return model.apply(variables, x, True, rngs={"dropout": key}, mutable=["batch_stats"])

  return jax.jit(apply)


def _run(model: nn.Module, variables, x, train: bool, dropout_key=RNGS["dropout"]):
  """(feature_map, pooled); in train mode with batch statistics and dropout."""
  out = _jitted(model, train)(variables, x, dropout_key)
  return out[0] if train else out


@functools.cache
def _tiny_variables(model: nn.Module, shape: tuple[int, ...]):
  """(x, variables) for a tiny model, initialised once per session."""
  x = jax.random.normal(_key(8), shape)
  return x, jax.jit(lambda rngs, x: model.init(rngs, x, False))(RNGS, x)


def _abstract_init(model: nn.Module, shape):
  """(variables, (feature_map, pooled)) as ShapeDtypeStructs, without computing anything."""
  return jax.eval_shape(lambda x: model.init_with_output(RNGS, x, False)[::-1], jnp.zeros(shape))


def _num_params(variables) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


class _CNN13WithHead(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    _, pooled = CNN13()(x, train)
    return WeightNormDense(10)(pooled)


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "model, shape, expected",
    [
        (ResNet12(), (1, 84, 84, 3), 7_996_800),
        (ResNet12Wide(), (1, 84, 84, 3), 12_424_320),
        (ResNet18(), (1, 84, 84, 3), 11_176_512),
        (_CNN13WithHead(), (1, 32, 32, 3), 3_125_908),
        # 3*9*64+64 + 3*(64*9*64+64) conv, 4*2*64 BN.
        (Conv4(), (1, 84, 84, 3), 113_088),
    ],
)
def test_exact_parameter_counts(model, shape, expected):
  variables, _ = _abstract_init(model, shape)
  assert _num_params(variables) == expected


@pytest.mark.parametrize(
    "model, shape, map_shape",
    [
        (ResNet12(), (2, 84, 84, 3), (2, 5, 5, 512)),
        (ResNet12(), (2, 32, 32, 3), (2, 2, 2, 512)),
        (ResNet12Wide(), (2, 84, 84, 3), (2, 5, 5, 640)),
        (ResNet18(), (2, 84, 84, 3), (2, 3, 3, 512)),
        (ResNet18(), (2, 224, 224, 3), (2, 7, 7, 512)),
        (ResNet18(cifar_stem=True), (2, 32, 32, 3), (2, 4, 4, 512)),
        (CNN13(), (2, 32, 32, 3), (2, 6, 6, 128)),
        (Conv4(), (2, 28, 28, 1), (2, 1, 1, 64)),
        (Conv4(), (2, 84, 84, 3), (2, 5, 5, 64)),
        (Conv4(pool_blocks=2), (2, 28, 28, 1), (2, 7, 7, 64)),
        # Odd sizes floor as torch's MaxPool2d(2): 29 -> 14 -> 7 -> 3 -> 1.
        (Conv4(), (2, 29, 29, 1), (2, 1, 1, 64)),
        # torch's stem: conv 7/2 pad 3 gives 17, MaxPool2d(3, 2, 1) gives 9; then 9, 5, 3, 2.
        (ResNet18(), (2, 33, 33, 3), (2, 2, 2, 512)),
    ],
)
def test_output_shapes(model, shape, map_shape):
  _, (feature_map, pooled) = _abstract_init(model, shape)
  assert feature_map.shape == map_shape
  assert pooled.shape == (map_shape[0], map_shape[-1])


def test_cifar_stem_has_a_3x3_stem_and_the_same_blocks():
  big, _ = _abstract_init(ResNet18(), (1, 32, 32, 3))
  cifar, _ = _abstract_init(ResNet18(cifar_stem=True), (1, 32, 32, 3))
  assert cifar["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  assert big["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  assert _num_params(big) - _num_params(cifar) == (49 - 9) * 3 * 64


def test_submodule_names_are_the_shared_interface():
  variables, _ = _abstract_init(ResNet12(), (1, 32, 32, 3))
  params = variables["params"]
  assert sorted(params) == ["block0", "block1", "block2", "block3"]
  assert sorted(params["block1"]) == sorted(
      ["conv0", "bn0", "conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"]
  )
  assert "bias" not in params["block1"]["conv0"]
  assert sorted(variables["batch_stats"]["block3"]["bn2"]) == ["mean", "var"]
  conv4, _ = _abstract_init(Conv4(), (1, 28, 28, 1))
  assert sorted(conv4["params"]) == ["block0", "block1", "block2", "block3"]
  assert sorted(conv4["params"]["block2"]) == ["bn", "conv"]
  assert sorted(conv4["params"]["block2"]["conv"]) == ["bias", "kernel"]
  cnn13, _ = _abstract_init(CNN13(), (1, 32, 32, 3))
  assert {k: v.shape for k, v in cnn13["params"]["conv3a"].items()} == {
      "v": (3, 3, 256, 512),
      "g": (512,),
      "bias": (512,),
  }


# ---------------------------------------------------------------- layers


def test_weight_norm_dense_by_hand():
  params = {
      "params": {"v": jnp.array([[3.0], [4.0]]), "g": jnp.array([10.0]), "bias": jnp.array([1.0])}
  }
  # w = 10 * [3, 4] / 5 = [6, 8]; [1, 1] . w + 1 = 15; [2, -1] . w + 1 = 5.
  y = WeightNormDense(1).apply(params, jnp.array([[1.0, 1.0], [2.0, -1.0]]))
  np.testing.assert_allclose(y, [[15.0], [5.0]])


def test_torch_linear_init_bounds_and_output():
  x = jax.random.normal(_key(2), (3, 16))
  variables = TorchLinear(5).init(_key(3), x)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  assert kernel.shape == (16, 5) and bias.shape == (5,)
  # torch.nn.Linear: kernel and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)), here 0.25.
  assert 0.2 < float(jnp.abs(kernel).max()) <= 0.25 and float(jnp.abs(bias).max()) <= 0.25
  np.testing.assert_allclose(TorchLinear(5).apply(variables, x), x @ kernel + bias, rtol=1e-6)


def test_weight_norm_init_equals_plain_layer_and_conv_matches_nn_conv():
  x = jax.random.normal(_key(2), (2, 6, 6, 3))
  layer = WeightNormConv(5, kernel_size=3, padding=1)
  variables = layer.init(_key(3), x)
  v, g, b = (variables["params"][k] for k in ("v", "g", "bias"))
  # torch's weight_norm starts at g = ||v|| per output channel, so w = v.
  np.testing.assert_allclose(g, jnp.sqrt(jnp.sum(v**2, axis=(0, 1, 2))), rtol=1e-6)
  bound = 1 / np.sqrt(27)
  assert float(jnp.abs(v).max()) <= bound and float(jnp.abs(b).max()) <= bound
  g2 = 2.0 * g
  plain = nn.Conv(5, (3, 3), padding="SAME").apply({"params": {"kernel": 2.0 * v, "bias": b}}, x)
  ours = layer.apply({"params": {"v": v, "g": g2, "bias": b}}, x)
  np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5)
  valid = WeightNormConv(5, kernel_size=3, padding="VALID").apply(variables, x)
  assert valid.shape == (2, 4, 4, 5)


def test_batch_norm_uses_torch_momentum_and_epsilon():
  x = jnp.arange(8, dtype=jnp.float32).reshape(2, 2, 2, 1)
  block = Conv4Block(width=1)
  params = {
      "conv": {"kernel": jnp.ones((3, 3, 1, 1)), "bias": jnp.zeros(1)},
      "bn": {"scale": jnp.ones(1), "bias": jnp.zeros(1)},
  }
  stats = {"bn": {"mean": jnp.zeros(1), "var": jnp.ones(1)}}
  _, updates = block.apply(
      {"params": params, "batch_stats": stats}, x, True, mutable=["batch_stats"]
  )
  # With 'SAME' padding every output sums all four pixels of its image: 6 and 22.
  # Batch mean 14, variance 64 (flax keeps the biased variance; torch's n/(n-1) factor is
  # negligible at real batch sizes); torch momentum 0.1 moves the stats 10% of the way.
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"], [1.4], rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["var"], [0.9 + 6.4], rtol=1e-6)
  # Eval mode with running variance 0 divides by sqrt(epsilon) = sqrt(1e-5).
  zero_var = {"bn": {"mean": jnp.zeros(1), "var": jnp.zeros(1)}}
  y = block.apply({"params": params, "batch_stats": zero_var}, x, False)
  np.testing.assert_allclose(y.reshape(-1), np.array([6.0, 22.0]) / np.sqrt(1e-5), rtol=1e-5)


def test_block_mask_zeroes_exactly_the_seeded_squares():
  seeds = np.zeros((1, 6, 5, 1), np.float32)  # map 8 x 7, block 3
  seeds[0, 1, 4, 0] = 1.0
  keep = np.asarray(block_mask_from_seeds(jnp.asarray(seeds), 3))
  expected = np.ones((1, 8, 7, 1), np.float32)
  expected[0, 1:4, 4:7, 0] = 0.0
  np.testing.assert_array_equal(keep, expected)


def test_drop_block_drops_the_expected_fraction_and_rescales():
  x = jnp.ones((64, 12, 12, 16))
  rate, size = 0.2, 3
  y = np.asarray(drop_block(_key(4), x, rate, size))
  dropped = y == 0
  # Kept units are all scaled by N / kept, so the mean stays exactly 1.
  np.testing.assert_allclose(y.mean(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(y[~dropped], y.size / (~dropped).sum(), rtol=1e-5)
  # A unit in row r is covered by seeds in min(r, 9) - max(r - 2, 0) + 1 rows (same for
  # columns); it survives with probability (1 - gamma) ** (rows * cols).
  gamma = dropblock_gamma(rate, size, 12, 12)
  assert gamma == pytest.approx(0.2 / 9 * 144 / 100)
  cover = np.array([min(r, 9) - max(r - 2, 0) + 1 for r in range(12)])
  expected = 1 - np.mean((1 - gamma) ** np.outer(cover, cover))
  assert dropped.mean() == pytest.approx(expected, abs=0.01)


def test_drop_block_rejects_a_rate_outside_0_1():
  with pytest.raises(ValueError, match="drop_rate"):
    drop_block(_key(0), jnp.ones((1, 4, 4, 1)), 1.0, 3)


def test_drop_block_larger_than_the_map_drops_whole_channels():
  y = np.asarray(drop_block(_key(5), jnp.ones((32, 2, 2, 16)), 0.5, 5))
  per_channel = (y == 0).reshape(32, 4, 16).sum(axis=1)
  assert set(np.unique(per_channel)) == {0, 4}


def test_dropblock_layer_is_identity_in_eval_mode():
  x = jax.random.normal(_key(6), (2, 6, 6, 4))
  layer = DropBlock(0.3, 3)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  out = layer.apply({}, x, deterministic=False, rngs={"dropout": _key(7)})
  assert not np.array_equal(out, x)


# ---------------------------------------------------------------- encoders at work


@pytest.fixture
def tiny_resnet12():
  return _tiny_variables(ResNet12Tiny(), (4, 32, 32, 3))


def test_resnet12_dropblock_acts_in_train_mode_only(tiny_resnet12):
  x, variables = tiny_resnet12
  off, on = ResNet12Tiny(), ResNet12Tiny(dropblock=True, drop_rate=0.3)
  k1, k2 = _key(9), _key(10)
  np.testing.assert_array_equal(_run(off, variables, x, False)[0], _run(on, variables, x, False)[0])
  plain = _run(off, variables, x, True, k1)[0]
  dropped, pooled = _run(on, variables, x, True, k1)
  redrawn = _run(on, variables, x, True, k2)[0]
  assert not np.array_equal(plain, dropped)
  assert not np.array_equal(dropped, redrawn)
  # The last map is 2x2, smaller than the 5x5 block: each channel is kept or dropped whole.
  assert np.any(np.all(np.asarray(dropped) == 0, axis=(1, 2)))
  np.testing.assert_allclose(pooled, dropped.mean(axis=(1, 2)), rtol=1e-6)


def test_blocks_rebuilt_alone_reproduce_the_encoder(tiny_resnet12):
  x, variables = tiny_resnet12
  fmap, pooled = ResNet12Tiny(activation="swish").apply(variables, x, False)
  y = x
  for i, width in enumerate(ResNet12Tiny().widths):
    block_vars = {c: v[f"block{i}"] for c, v in variables.items()}
    y = ResNet12Block(width, activation="swish").apply(block_vars, y, False)
  np.testing.assert_allclose(y, fmap, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled, fmap.mean(axis=(1, 2)), rtol=1e-5)


def test_leaky_relu_and_swish_differ(tiny_resnet12):
  x, variables = tiny_resnet12
  leaky = _run(ResNet12Tiny(), variables, x, False)[0]
  swish = _run(ResNet12Tiny(activation="swish"), variables, x, False)[0]
  assert not np.allclose(leaky, swish, atol=1e-3)
  with pytest.raises(ValueError, match="gelu"):
    ResNet12Tiny(activation="gelu").apply(variables, x, False)


@pytest.mark.parametrize(
    "tiny, shape",
    [
        (ResNet12Tiny, (4, 32, 32, 3)),
        (ResNet18Tiny, (2, 32, 32, 3)),
        (CNN13Tiny, (2, 32, 32, 3)),
        (functools.partial(Conv4, width=8), (2, 28, 28, 1)),
    ],
)
def test_bfloat16_compute_with_float32_params(tiny, shape):
  x, variables = _tiny_variables(tiny(), shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  low_train = _run(tiny(dtype=jnp.bfloat16), variables, x, True)
  # Computed in bfloat16, the features leave in float32 (encoder_outputs).
  assert all(a.dtype == jnp.float32 for a in low_train)
  assert np.isfinite(np.asarray(low_train[0], np.float32)).all()
  # Eval mode (no batch statistics of 2 examples, no dropout): only rounding differs.
  ref = np.asarray(_run(tiny(), variables, x, False)[0])
  low = np.asarray(_run(tiny(dtype=jnp.bfloat16), variables, x, False)[0], np.float32)
  assert 0 < np.abs(low - ref).max() <= 0.03 * np.abs(ref).max()


def test_cnn13_dropout_acts_in_train_mode():
  x, variables = _tiny_variables(CNN13Tiny(), (2, 32, 32, 3))
  keys = [_key(seed) for seed in (0, 1)]
  assert not np.array_equal(*[_run(CNN13Tiny(), variables, x, True, k)[0] for k in keys])
  np.testing.assert_array_equal(*[_run(CNN13Tiny(), variables, x, False, k)[0] for k in keys])


# ---------------------------------------------------------------- registry


def test_build_encoder_names_and_kwargs():
  assert encoder_names() == ["resnet12", "resnet12_wide", "resnet18", "cnn13", "conv4"]
  assert isinstance(build_encoder("resnet12"), ResNet12)
  assert tuple(build_encoder("resnet12_wide").widths) == (64, 160, 320, 640)
  assert build_encoder("resnet18", cifar_stem=True).cifar_stem
  assert isinstance(build_encoder("cnn13"), CNN13)
  assert build_encoder("conv4", width=32, dtype=jnp.bfloat16).width == 32
  assert isinstance(build_encoder("resnet18"), ResNet18)
  with pytest.raises(ValueError, match="resnet12_wide"):
    build_encoder("resnet-12")
  with pytest.raises(ValueError, match="pool_blocks"):
    _abstract_init(Conv4(pool_blocks=5), (1, 28, 28, 1))


def test_build_encoder_without_cpu_kernels_is_plain_flax():
  for name in encoder_names():
    model = build_encoder(name, cpu_kernels=False)
    conv = WeightNormConv if name == "cnn13" else nn.Conv
    assert (model.conv, model.norm, model.pool) == (conv, nn.BatchNorm, nn.max_pool), name
    if backend.cpu_kernels() is None:
      assert build_encoder(name) == model


@pytest.mark.skipif(
    importlib.util.find_spec("groundwork_cpu") is not None, reason="groundwork_cpu is installed"
)
def test_build_encoder_asked_for_missing_cpu_kernels_says_what_to_install():
  expected = (
      "groundwork_cpu package is not installed.*pip install"
      if (backend.computes_on_cpu())
      else "serve the CPU only"
  )
  with pytest.raises(RuntimeError, match=expected):
    build_encoder("conv4", cpu_kernels=True)


# ---------------------------------------------------------------- injected layers


def _recording(cls, calls: list, *fields: str):
  """`cls` that appends (its name, module path, *fields' values) to `calls` when it runs."""

  class Recording(cls):

    @nn.compact
    def __call__(self, *args, **kwargs):
      calls.append((cls.__name__, "/".join(self.scope.path), *(getattr(self, f) for f in fields)))
      return super().__call__(*args, **kwargs)

  return Recording


def _recording_pool(calls: list):
  def pool(x, window_shape, strides=None, padding="VALID"):
    calls.append(("pool", tuple(window_shape), tuple(strides), padding))
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)

  return pool


def _module_paths(tree, leaf: str) -> list[str]:
  """Paths of the modules in `tree` that hold a variable called `leaf`."""
  return sorted("/".join(p[:-1]) for p in traverse_util.flatten_dict(tree) if p[-1] == leaf)


_POOL2 = ("pool", (2, 2), (2, 2), "VALID")
_STEM_POOL = ("pool", (3, 3), (2, 2), ((1, 1), (1, 1)))
_KERNEL_LEAF = {nn.Conv: "kernel", WeightNormConv: "v"}


@pytest.mark.parametrize(
    "tiny, shape, conv, pools",
    [
        (ResNet12Tiny, (4, 32, 32, 3), nn.Conv, [_POOL2] * 4),
        (ResNet18Tiny, (2, 32, 32, 3), nn.Conv, [_STEM_POOL]),
        (CNN13Tiny, (2, 32, 32, 3), WeightNormConv, [_POOL2] * 2),
        (functools.partial(Conv4, width=8), (2, 28, 28, 1), nn.Conv, [_POOL2] * 4),
    ],
)
def test_injected_layers_make_every_layer_and_change_no_variable(tiny, shape, conv, pools):
  x, variables = _tiny_variables(tiny(), shape)
  calls = []
  model = tiny(
      conv=_recording(conv, calls),
      norm=_recording(
          nn.BatchNorm, calls, "use_running_average", "momentum", "epsilon", "param_dtype"
      ),
      pool=_recording_pool(calls),
  )
  injected = jax.jit(lambda rngs, x: model.init(rngs, x, False))(RNGS, x)
  # Same names, shapes and initial values as flax's layers: checkpoints load either way.
  assert jax.tree.structure(injected) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, injected, variables)

  calls.clear()
  fmap = _run(model, variables, x, True)[0]
  # Every conv and BatchNorm of the tree, and every max-pool, went through the injected one.
  assert sorted(c[1] for c in calls if c[0] == conv.__name__) == _module_paths(
      variables["params"], _KERNEL_LEAF[conv]
  )
  norms = [c for c in calls if c[0] == "BatchNorm"]
  assert sorted(c[1] for c in norms) == _module_paths(variables["batch_stats"], "mean")
  # In train mode with PyTorch's momentum and epsilon, float32 parameters.
  assert {c[2:] for c in norms} == {(False, 0.9, 1e-5, jnp.float32)}
  assert [c for c in calls if c[0] == "pool"] == pools
  np.testing.assert_array_equal(fmap, _run(tiny(), variables, x, True)[0])


def _fake_cpu_kernels(calls: list) -> types.SimpleNamespace:
  """The groundwork_cpu contract, on flax's own layers, recording every use."""

  def conv_general_dilated(*args, **kwargs):
    calls.append(("conv_general_dilated",))
    return jax.lax.conv_general_dilated(*args, **kwargs)

  return types.SimpleNamespace(
      conv_general_dilated=conv_general_dilated,
      BatchNorm=_recording(nn.BatchNorm, calls),
      max_pool=_recording_pool(calls),
  )


@pytest.mark.parametrize(
    "name, conv, shape",
    [
        ("resnet12", nn.Conv, (1, 32, 32, 3)),
        ("resnet12_wide", nn.Conv, (1, 32, 32, 3)),
        ("resnet18", nn.Conv, (1, 32, 32, 3)),
        ("cnn13", WeightNormConv, (1, 32, 32, 3)),
        ("conv4", nn.Conv, (1, 28, 28, 1)),
    ],
)
def test_build_encoder_puts_cpu_kernels_into_the_encoders_own_layers(
    monkeypatch, name, conv, shape
):
  calls = []
  kernels = _fake_cpu_kernels(calls)
  monkeypatch.setattr(backend, "cpu_kernels", lambda: kernels)
  monkeypatch.setattr(backend, "require_cpu_kernels", lambda: kernels)
  model = build_encoder(name)
  assert model.conv.func is conv
  assert model.conv.keywords == {"conv_general_dilated": kernels.conv_general_dilated}
  assert (model.norm, model.pool) == (kernels.BatchNorm, kernels.max_pool)
  # Built alike, equal: a jit taking the model as a static argument compiles once.
  assert build_encoder(name, cpu_kernels=True) == model
  plain = build_encoder(name, cpu_kernels=False)
  assert (plain.conv, plain.norm, plain.pool) == (conv, nn.BatchNorm, nn.max_pool)
  # The caller's layers win; nothing else differs (resnet12_wide keeps its widths).
  mixed = build_encoder(name, norm=nn.BatchNorm)
  assert (mixed.conv, mixed.norm, mixed.pool) == (model.conv, nn.BatchNorm, model.pool)
  assert model.clone(conv=conv, norm=nn.BatchNorm, pool=nn.max_pool) == plain

  variables, (fmap, _) = _abstract_init(model, shape)
  plain_variables, (plain_fmap, _) = _abstract_init(plain, shape)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, plain_variables)
  assert fmap.shape == plain_fmap.shape
  # Every convolution, BatchNorm and max-pool ran on the kernels.
  kernel_leaf = _KERNEL_LEAF[conv]
  assert calls.count(("conv_general_dilated",)) == len(
      _module_paths(variables["params"], kernel_leaf)
  )
  assert sorted(c[1] for c in calls if c[0] == "BatchNorm") == _module_paths(
      variables["batch_stats"], "mean"
  )
  assert sum(c[0] == "pool" for c in calls) == {"resnet18": 1, "cnn13": 2}.get(name, 4)
