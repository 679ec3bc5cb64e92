"""Layers shared by the encoders: activations, BatchNorm settings, DropBlock, weight norm.

All layers take NHWC inputs, keep parameters in float32 and compute in `dtype`.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from groundwork.encoders import fast_conv, onednn_layers

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    # Slope 0.1 as in the DC / MetaOptNet ResNet-12 and Mean Teacher's conv-large.
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.1),
    "swish": nn.swish,
}


def activation_fn(name: str) -> Callable[[Array], Array]:
    """Returns the activation called `name` (one of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


class CpuTrainBatchNorm(nn.Module):
    """`nn.BatchNorm` in training mode, float32, computed by oneDNN (onednn_layers.py).

    Same variables (params 'scale', 'bias'; batch_stats 'mean', 'var'), initial values and
    running-average rule as flax's, so checkpoints move freely between the two; on a 2-core
    CPU the statistics, normalisation and backward run 1.1-3x faster than XLA's lowering.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, jnp.float32))
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        y, mean, var = onednn_layers.batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


def batch_norm(train: bool, dtype: Dtype, name: str, momentum: float = 0.9) -> nn.Module:
    """BatchNorm with PyTorch's defaults (torch momentum 0.1 is flax momentum 0.9).

    Training-mode float32 BatchNorm takes oneDNN's kernels where the convolutions do
    (`onednn_layers.enabled()`, decided when traced); everything else is `nn.BatchNorm`.
    """
    if train and jnp.dtype(dtype) == jnp.float32 and onednn_layers.enabled():
        return CpuTrainBatchNorm(momentum=momentum, epsilon=1e-5, name=name)
    return nn.BatchNorm(
        use_running_average=not train, momentum=momentum, epsilon=1e-5,
        dtype=dtype, param_dtype=jnp.float32, name=name)


def max_pool2(x: Array) -> Array:
    """2x2 max-pool, stride 2, odd sizes floored (torch `MaxPool2d(2)`).

    On CPU it is a reshape and a max over the 2x2 windows: XLA's CPU backend runs
    `reduce_window`'s gradient (select-and-scatter) 3-6x slower than the reduction's
    (ResNet-12 at 84x84, batch 16: 79 against 26 ms for the first pool, forward and
    backward). The values are the same; so are the gradients except where a window
    holds tied maxima, which the reduction shares out and select-and-scatter gives to
    one of them (both are gradients of max; after a ReLU the tie is at 0, where the
    ReLU passes no gradient anyway). Where the convolutions run on oneDNN, so does the
    pool (onednn_layers.py: 9x faster again, forward and backward, on ResNet-12's first
    pool). Accelerators keep `reduce_window`.
    """
    if x.dtype == jnp.float32 and onednn_layers.enabled():
        return onednn_layers.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    if jax.default_backend() != "cpu":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    b, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool3_stride2(x: Array) -> Array:
    """3x3 max-pool, stride 2, padding 1 (torch `MaxPool2d(3, 2, 1)`, the ResNet-18 stem's).

    On CPU it is the elementwise max of the nine strided shifts of the (-inf padded) input,
    for the reason of `max_pool2`: XLA's CPU backend runs `reduce_window`'s gradient
    through select-and-gather/scatter (ResNet-18 at 84x84, batch 64: ~110 ms of a 570 ms
    step). Values are the same; gradients too, but for tied maxima (see `max_pool2`).
    Where the convolutions run on oneDNN, so does the pool (onednn_layers.py: 18 -> 2 ms
    forward and backward at 42x42x64, batch 64). Accelerators keep `reduce_window`.
    """
    if x.dtype == jnp.float32 and onednn_layers.enabled():
        return onednn_layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    if jax.default_backend() != "cpu":
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    b, h, w, c = x.shape
    h_out, w_out = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    shifts = [jax.lax.slice(padded, (0, i, j, 0), (b, i + 2 * h_out - 1, j + 2 * w_out - 1, c),
                            (1, 2, 2, 1)) for i in range(3) for j in range(3)]
    return functools.reduce(jnp.maximum, shifts)


# PyTorch's default init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# ---------------------------------------------------------------- DropBlock

def dropblock_gamma(drop_rate: float, block_size: int, height: int, width: int) -> float:
    """Seed probability such that about `drop_rate` of the units fall in a dropped block.

    Ghiasi et al. 2018, eq. (1): seeds are only drawn where a whole block fits.
    """
    valid = (height - block_size + 1) * (width - block_size + 1)
    return drop_rate / block_size**2 * (height * width) / valid


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
        seeds, jnp.array(0, seeds.dtype), jax.lax.max,
        window_dimensions=(1, block_size, block_size, 1),
        window_strides=(1, 1, 1, 1),
        padding=((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return 1 - covered


def drop_block(key: Array, x: Array, drop_rate: float, block_size: int) -> Array:
    """DropBlock (Ghiasi et al. 2018) as in RFS / MetaOptNet's ResNet-12.

    Seeds are drawn independently per example and channel; the kept units are rescaled by
    (number of units) / (number kept) over the whole tensor. A block larger than the map is
    shrunk to the map, so on a map of that size a seed drops a whole channel.
    """
    if not 0.0 <= drop_rate < 1.0:
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
    """DropBlock layer; acts only when `deterministic` is False, using the 'dropout' rng."""

    drop_rate: float
    block_size: int = 5

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.drop_rate == 0.0:
            return x
        return drop_block(self.make_rng("dropout"), x, self.drop_rate, self.block_size)


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
    g = module.param(
        "g", lambda _key: jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))
    bound = 1.0 / fan_in**0.5
    bias = module.param(
        "bias", lambda key: jax.random.uniform(key, (shape[-1],), jnp.float32, -bound, bound))
    return v, g, bias


class WeightNormConv(nn.Module):
    """2-D convolution with weight norm and bias (torch `weight_norm(nn.Conv2d(...))`).

    Parameters: `v` [kh, kw, in, out], `g` [out], `bias` [out].
    `padding` is 'SAME', 'VALID' or an int applied to every side (torch style).
    """

    features: int
    kernel_size: int = 3
    padding: str | int = "SAME"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        in_features = x.shape[-1]
        v, g, bias = _weight_norm_params(
            self, (k, k, in_features, self.features), fan_in=k * k * in_features)
        kernel = _weight_norm(v, g)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        y = fast_conv.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
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
        v, g, bias = _weight_norm_params(
            self, (in_features, self.features), fan_in=in_features)
        kernel = _weight_norm(v, g)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return x @ kernel + bias
