"""Layers shared by the encoders: activations, BatchNorm settings, DropBlock, torch-initialised
linear layer, weight norm.

All layers take NHWC inputs, keep parameters in float32 and compute in `dtype`. Encoders
take their convolution, BatchNorm and max-pool as fields (`conv`, `norm`, `pool`), so the
platform's layers are chosen where the model is built (`build_encoder`), never here.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

Array = jax.Array
Dtype = Any
# A layer class (`nn.Conv`, `nn.BatchNorm`) or a partial of one, as flax's imagenet example.
ModuleDef = Any
# What an encoder may compute in; its parameters are float32 under both.
COMPUTE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    # Slope 0.1 as in the DC / MetaOptNet ResNet-12 and Mean Teacher's conv-large.
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.1),
    "swish": nn.swish,
}


def activation_fn(name: str) -> Callable[[Array], Array]:
  """Returns the activation called `name` (one of `ACTIVATIONS`)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def encoder_outputs(feature_map: Array) -> tuple[Array, Array]:
  """An encoder's `(feature_map, pooled)` from its last map, both float32.

  Whatever the encoder computed in, its features leave in float32, so heads, losses,
  prototypes and label propagation compute in float32 (groundwork/training/precision.py
  says why); pooling averages the float32 map. Under float32 this is the plain mean.
  """
  feature_map = feature_map.astype(jnp.float32)
  return feature_map, jnp.mean(feature_map, axis=(1, 2))


def batch_norm(
    norm: ModuleDef, train: bool, dtype: Dtype, name: str, momentum: float = 0.9
) -> nn.Module:
  """`norm` (an `nn.BatchNorm`-like class) with PyTorch's defaults.

  torch's momentum 0.1 is flax's 0.9; epsilon 1e-5 is torch's; parameters stay float32, and
  flax's BatchNorm computes its batch statistics and keeps its running ones in float32 for
  any `dtype`, returning `dtype` (tests/test_mixed_precision.py checks both).
  """
  return norm(
      use_running_average=not train,
      momentum=momentum,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


# PyTorch's default init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# ---------------------------------------------------------------- DropBlock


def dropblock_gamma(
    drop_rate: float | Array, block_size: int, height: int, width: int
) -> float | Array:
  """Seed probability such that about `drop_rate` of the units fall in a dropped block.

  Ghiasi et al. 2018, eq. (1): seeds are only drawn where a whole block fits. RFS and
  MetaOptNet write it for square maps, `drop_rate / s**2 * H**2 / (H - s + 1)**2`.
  """
  valid = (height - block_size + 1) * (width - block_size + 1)
  return drop_rate / block_size**2 * (height * width) / valid


def warmed_up_drop_rate(drop_rate: float, warmup_steps: int, step: Array | int) -> float | Array:
  """The DropBlock rate at 0-based training `step` of a linear warm-up over `warmup_steps`.

  RFS and MetaOptNet ramp the keep rate as max(1 - drop_rate * t / 40,000, 1 - drop_rate),
  t counting the block's forward passes from 1; with t = step + 1 this is
  min(drop_rate * (step + 1) / warmup_steps, drop_rate). `warmup_steps=0`: no warm-up,
  `drop_rate` itself from the first step.
  """
  if warmup_steps < 0:
    raise ValueError(f"DropBlock needs warmup_steps >= 0 (0 = no warm-up), got {warmup_steps}.")
  if warmup_steps == 0:
    return drop_rate
  t = jnp.asarray(step, jnp.float32) + 1.0
  return jnp.minimum(drop_rate * t / warmup_steps, drop_rate)


def block_mask_from_seeds(seeds: Array, block_size: int) -> Array:
  """Keep-mask from block seeds.

  Args:
    seeds: [B, H - s + 1, W - s + 1, C], 1 where a block starts (its top-left corner).
    block_size: s.
  Returns:
    [B, H, W, C] with 0 on every s x s block [i, i+s) x [j, j+s) whose seed (i, j) is 1,
    else 1 (the RFS / MetaOptNet placement: blocks lie wholly inside the map).
  """
  pad = block_size - 1
  covered = jax.lax.reduce_window(
      seeds,
      jnp.array(0, seeds.dtype),
      jax.lax.max,
      window_dimensions=(1, block_size, block_size, 1),
      window_strides=(1, 1, 1, 1),
      padding=((0, 0), (pad, pad), (pad, pad), (0, 0)),
  )
  return 1 - covered


def drop_block(key: Array, x: Array, drop_rate: float | Array, block_size: int) -> Array:
  """DropBlock (Ghiasi et al. 2018) as in RFS / MetaOptNet's ResNet-12.

  Seeds are drawn independently per example and channel; the kept units are rescaled by
  (number of units) / (number kept) over the whole tensor. A block larger than the map is
  shrunk to the map, so on a map of that size a seed drops a whole channel. `drop_rate`
  may be traced (a warm-up's rate, `warmed_up_drop_rate`); a Python number is checked here.
  """
  if isinstance(drop_rate, (int, float)) and not 0.0 <= drop_rate < 1.0:
    raise ValueError(f"DropBlock needs 0 <= drop_rate < 1, got drop_rate={drop_rate}.")
  _, height, width, _ = x.shape
  size = min(block_size, height, width)
  gamma = dropblock_gamma(drop_rate, size, height, width)
  seed_shape = (x.shape[0], height - size + 1, width - size + 1, x.shape[3])
  seeds = jax.random.bernoulli(key, gamma, seed_shape).astype(jnp.float32)
  keep = block_mask_from_seeds(seeds, size)
  # Guard against an all-dropped tensor (possible at tiny sizes): output zeros, not NaN.
  scale = keep.size / jnp.maximum(keep.sum(), 1.0)
  return x * (keep * scale).astype(x.dtype)


class DropBlock(nn.Module):
  """DropBlock layer; acts only when `deterministic` is False, using the 'dropout' rng.

  With `warmup_steps` > 0 its rate ramps up linearly (`warmed_up_drop_rate`) and a
  training call must give the 0-based training `step`.
  """

  drop_rate: float
  block_size: int = 5
  warmup_steps: int = 0

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, step: Array | int | None = None) -> Array:
    if deterministic or self.drop_rate == 0.0:
      return x
    if self.warmup_steps and step is None:
      raise ValueError(
          f"DropBlock with warmup_steps={self.warmup_steps} needs the training step: call "
          "the encoder with step=state.step, or set dropblock_warmup_steps=0."
      )
    rate = warmed_up_drop_rate(self.drop_rate, self.warmup_steps, step)
    return drop_block(self.make_rng("dropout"), x, rate, self.block_size)


# ---------------------------------------------------------------- linear


class TorchLinear(nn.Module):
  """Linear layer initialised as `torch.nn.Linear`: kernel and bias U(+-1/sqrt(fan_in)).

  Parameters: `kernel` [in, out], `bias` [out], float32; computes in `dtype`.
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    kernel = self.param(
        "kernel", torch_default_kernel_init, (in_features, self.features), jnp.float32
    )
    bound = 1.0 / in_features**0.5
    bias = self.param(
        "bias", lambda key: jax.random.uniform(key, (self.features,), jnp.float32, -bound, bound)
    )
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    return x @ kernel + bias


# ---------------------------------------------------------------- weight norm


def _weight_norm(v: Array, g: Array) -> Array:
  """w = g * v / ||v||, the norm over all axes but the last (output) one.

  Same parametrisation as `torch.nn.utils.weight_norm(module)` (dim=0 of the torch
  weight is the output axis, which is last in flax's kernel layout).
  """
  axes = tuple(range(v.ndim - 1))
  return v * (g / jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))


def _weight_norm_params(module: nn.Module, shape: Sequence[int], fan_in: int):
  """Creates v, g, bias initialised like torch: w = v at init (g = ||v||), torch bias."""
  v = module.param("v", torch_default_kernel_init, tuple(shape), jnp.float32)
  axes = tuple(range(len(shape) - 1))
  g = module.param("g", lambda _key: jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))
  bound = 1.0 / fan_in**0.5
  bias = module.param(
      "bias", lambda key: jax.random.uniform(key, (shape[-1],), jnp.float32, -bound, bound)
  )
  return v, g, bias


class WeightNormConv(nn.Module):
  """2-D convolution with weight norm and bias (torch `weight_norm(nn.Conv2d(...))`).

  Parameters: `v` [kh, kw, in, out], `g` [out], `bias` [out].
  `padding` is 'SAME', 'VALID' or an int applied to every side (torch style).
  `conv_general_dilated` computes the convolution, as in `nn.Conv`.
  """

  features: int
  kernel_size: int = 3
  padding: str | int = "SAME"
  dtype: Dtype = jnp.float32
  conv_general_dilated: Callable[..., Array] = jax.lax.conv_general_dilated

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    in_features = x.shape[-1]
    v, g, bias = _weight_norm_params(
        self, (k, k, in_features, self.features), fan_in=k * k * in_features
    )
    kernel = _weight_norm(v, g)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    padding = self.padding
    if isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    y = self.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + bias


class WeightNormDense(nn.Module):
  """Linear layer with weight norm and bias (torch `weight_norm(nn.Linear(...))`).

  Parameters: `v` [in, out], `g` [out], `bias` [out].
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    v, g, bias = _weight_norm_params(self, (in_features, self.features), fan_in=in_features)
    kernel = _weight_norm(v, g)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    return x @ kernel + bias
