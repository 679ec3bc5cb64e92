"""BatchNorm (training mode) and max-pooling on CPU through oneDNN: onednn_layers.cc's handlers.

Once the convolutions run on oneDNN (onednn_conv.py), most of what is left of a ResNet step
on XLA's CPU backend is BatchNorm and pooling, each lowered to several passes over the
activations (the ResNet-18 stem's max-pool forward and backward: ~43 ms of a ~490 ms step at
84x84, batch 64). These are the same functions computed by oneDNN's kernels, which PyTorch
also uses:

  `batch_norm_train(x, scale, bias, epsilon)` -> (y, mean, var): normalisation by the batch's
    statistics over every axis but the last, as flax's `BatchNorm` in training mode (var is
    the biased variance, as flax keeps it), with oneDNN's backward;
  `max_pool(x, window, strides, pads)`: NHWC max-pool with explicit pads that never win the
    max (as `flax.linen.max_pool` pads with -inf); the backward routes each output gradient
    to the position that held the maximum (the first of tied maxima, where XLA's
    select-and-scatter may choose another; both are gradients of max).

The encoders use these exactly where the convolutions use oneDNN (`enabled()`: CPU, float32,
GROUNDWORK_CONV unset or auto/onednn, library built); GROUNDWORK_CONV=xla turns both off.
The library is built on first use like the convolutions' (groundwork/native.py).
"""

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from groundwork import native
from groundwork.encoders import fast_conv

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

LIBRARY = native.FfiLibrary(
    Path(__file__).with_name("onednn_layers.cc"),
    {"groundwork_onednn_batch_norm_forward": "GroundworkOnednnBatchNormForward",
     "groundwork_onednn_batch_norm_backward": "GroundworkOnednnBatchNormBackward",
     "groundwork_onednn_max_pool_forward": "GroundworkOnednnMaxPoolForward",
     "groundwork_onednn_max_pool_backward": "GroundworkOnednnMaxPoolBackward"},
    "oneDNN BatchNorm/max-pool")


# Module-level names: the callers and the tests use (and patch) these.
unavailable_reason = LIBRARY.unavailable_reason
available = LIBRARY.available


def enabled() -> bool:
    """Whether the encoders take this path when traced now: where the convolutions use oneDNN."""
    return fast_conv.current_impl() == "onednn" and available()


# ------------------------------------------------------------------------------ BatchNorm

def _norm_forward(x: Array, scale: Array, bias: Array, epsilon: float):
    LIBRARY.require()
    channels = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
    return jax.ffi.ffi_call("groundwork_onednn_batch_norm_forward",
                            (jax.ShapeDtypeStruct(x.shape, jnp.float32), channels, channels),
                            vmap_method="broadcast_all")(x, scale, bias,
                                                         epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float):
    """float32 `x` [..., C] normalised by its batch statistics: (scale * x_hat + bias, mean, var)."""
    return _norm_forward(x, scale, bias, epsilon)


def _batch_norm_fwd(x, scale, bias, epsilon):
    y, mean, var = _norm_forward(x.value, scale.value, bias.value, epsilon)
    return (y, mean, var), (x.value, scale.value, mean, var)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    x, scale, mean, var = residuals
    g_y, g_mean, g_var = cotangents
    if isinstance(g_y, SymbolicZero):
        dx, d_scale, d_bias = jnp.zeros_like(x), jnp.zeros_like(scale), jnp.zeros_like(scale)
    else:
        dx, d_scale, d_bias = jax.ffi.ffi_call(
            "groundwork_onednn_batch_norm_backward",
            (jax.ShapeDtypeStruct(x.shape, jnp.float32),
             jax.ShapeDtypeStruct(scale.shape, jnp.float32),
             jax.ShapeDtypeStruct(scale.shape, jnp.float32)),
            vmap_method="broadcast_all")(x, g_y.astype(jnp.float32), scale, mean, var,
                                         epsilon=np.float32(epsilon))
    # The statistics are outputs too; a training step only feeds them to the running
    # averages (no gradient), so these terms are skipped unless something differentiates them.
    rows = x.size // x.shape[-1]
    if not isinstance(g_mean, SymbolicZero):
        dx = dx + g_mean / rows
    if not isinstance(g_var, SymbolicZero):
        dx = dx + g_var * 2.0 * (x - mean) / rows
    return dx, d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd, symbolic_zeros=True)


# ------------------------------------------------------------------------------ max-pool

def output_shape(x_shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
                 pads: Pads) -> tuple[int, int, int, int]:
    """NHWC output shape, odd remainders dropped (torch's `MaxPool2d` without ceil_mode)."""
    n, h, w, c = x_shape
    return (n, (h + pads[0][0] + pads[0][1] - window[0]) // strides[0] + 1,
            (w + pads[1][0] + pads[1][1] - window[1]) // strides[1] + 1, c)


def _geometry(x_shape, window, strides, pads) -> tuple[int, ...]:
    n, h, w, c = x_shape
    _, oh, ow, _ = output_shape(x_shape, window, strides, pads)
    return (n, h, w, c, oh, ow, *window, *strides, *pads[0], *pads[1])


@functools.cache
def _workspace_bytes(geometry: tuple[int, ...]) -> int:
    library = LIBRARY.require()
    library.groundwork_max_pool_workspace_bytes.restype = ctypes.c_int64
    size = library.groundwork_max_pool_workspace_bytes((ctypes.c_int64 * 14)(*geometry))
    if size < 0:
        raise ValueError(f"oneDNN rejects the max-pool geometry {geometry} "
                         "(n, h, w, c, oh, ow, window, strides, pads)")
    return size


def _attrs(window, strides, pads) -> dict:
    return dict(window=np.asarray(window, np.int64), strides=np.asarray(strides, np.int64),
                pads=np.asarray([p for pair in pads for p in pair], np.int64))


def _pool_forward(x: Array, window, strides, pads) -> tuple[Array, Array]:
    geometry = _geometry(x.shape[-4:], window, strides, pads)
    y_shape = x.shape[:-4] + output_shape(x.shape[-4:], window, strides, pads)
    return jax.ffi.ffi_call(
        "groundwork_onednn_max_pool_forward",
        (jax.ShapeDtypeStruct(y_shape, jnp.float32),
         jax.ShapeDtypeStruct(x.shape[:-4] + (_workspace_bytes(geometry),), jnp.uint8)),
        vmap_method="broadcast_all")(x, **_attrs(window, strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads) -> Array:
    """float32 NHWC max-pool; `pads` = ((top, bottom), (left, right)), padded cells never win."""
    return _pool_forward(x, window, strides, pads)[0]


def _max_pool_fwd(x, window, strides, pads):
    y, workspace = _pool_forward(x, window, strides, pads)
    return y, (workspace, x.shape)


def _max_pool_bwd(window, strides, pads, residuals, g):
    workspace, x_shape = residuals
    dx = jax.ffi.ffi_call("groundwork_onednn_max_pool_backward",
                          jax.ShapeDtypeStruct(x_shape, jnp.float32),
                          vmap_method="broadcast_all")(
        g.astype(jnp.float32), workspace, **_attrs(window, strides, pads))
    return (dx,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def report() -> bool:
    """Builds if needed and prints where the library is or why there is none (`make install`)."""
    return LIBRARY.report("BatchNorm and pooling stay on XLA")
