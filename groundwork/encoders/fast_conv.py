"""A drop-in `lax.conv_general_dilated` that is fast on XLA's CPU backend.

XLA CPU lowers convolutions to Eigen: its forward reaches about half, its backward about a
quarter of what oneDNN's kernels reach on the same cores (benchmarks/train_speed.py). On CPU
this module therefore routes float32 NHWC/HWIO convolutions to one of two paths:

  'onednn' (onednn_conv.py): forward, input and weight gradient are oneDNN primitives called
    through XLA's FFI; any strides, non-negative pads. The default where it builds.
  'matmul' (pure JAX, the fallback where oneDNN is not available): XLA's forward with a
    custom VJP for stride-1 convolutions:
      weight gradient: dW[i, j] = X_ij^T G, one matrix product per kernel tap, where X_ij is
        the padded input shifted by (i, j) and flattened to [B*H_out*W_out, C_in] and G the
        output gradient flattened to [B*H_out*W_out, C_out];
      input gradient: a forward convolution of G with the spatially flipped, in/out-swapped
        kernel, padded by (k - 1 - pad) on each side.

Both compute the same function with the same gradients (to float rounding); every other
convolution, and every convolution on GPU/TPU, goes to `lax.conv_general_dilated` unchanged.
Encoders pass `conv_general_dilated` to `flax.linen.Conv(conv_general_dilated=...)`, so
parameters keep their names and shapes and checkpoints move freely between the paths.

Which path runs is decided when a function is traced: `current_impl()`, from the backend and
the GROUNDWORK_CONV variable: 'auto' (default: 'onednn' on CPU where it builds, else 'matmul'
on CPU for kernels with at least `AUTO_MIN_CHANNEL_PRODUCT` = C_in * C_out; 'xla' on
GPU/TPU), 'onednn', 'matmul' (every eligible convolution) or 'xla' (never).
"""

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from groundwork.encoders import onednn_conv

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

IMPLS = ("auto", "onednn", "matmul", "xla")
# Under 'matmul', narrower kernels keep XLA's backward: a [C_in, N] x [N, C_out] product with
# a small output (64 x 64) parallelises poorly, and on a 2-core machine the matmul path lost
# to XLA there (Conv-4 at 28x28: 350 vs 424 img/s) while winning from 64 x 160 up.
AUTO_MIN_CHANNEL_PRODUCT = 64 * 128
_NHWC = ("NHWC", "HWIO", "NHWC")


def select_impl(backend: str, override: str | None = None, onednn_ready: bool = False) -> str:
    """'onednn', 'matmul' or 'xla': the convolution path for `backend` ('cpu', 'gpu', ...).

    `override` (the GROUNDWORK_CONV variable) forces a path; None or 'auto' picks oneDNN on
    CPU when `onednn_ready`, else the matmul backward on CPU; accelerators keep XLA's own.
    """
    choice = override or "auto"
    if choice not in IMPLS:
        raise ValueError(f"GROUNDWORK_CONV={choice!r}; set it to one of {list(IMPLS)} or unset it.")
    if choice == "auto":
        if backend != "cpu":
            return "xla"
        return "onednn" if onednn_ready else "matmul"
    return choice


def current_impl() -> str:
    """The path `conv_general_dilated` takes when traced now: 'onednn', 'matmul' or 'xla'."""
    backend, override = jax.default_backend(), os.environ.get("GROUNDWORK_CONV")
    wants_onednn = override == "onednn" or (override in (None, "", "auto") and backend == "cpu")
    ready = wants_onednn and onednn_conv.available()
    if override == "onednn" and not ready:
        raise RuntimeError(f"GROUNDWORK_CONV=onednn but oneDNN convolutions are unavailable: "
                           f"{onednn_conv.unavailable_reason()}")
    if wants_onednn and not ready:
        onednn_conv.warn_unavailable()
    return select_impl(backend, override, ready)


def _wide_enough(kernel_shape) -> bool:
    forced = os.environ.get("GROUNDWORK_CONV") == "matmul"
    return forced or kernel_shape[2] * kernel_shape[3] >= AUTO_MIN_CHANNEL_PRODUCT


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    if ndim != 4:
        return False
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, tuple) and all(isinstance(s, str) for s in dimension_numbers):
        return tuple(dimension_numbers) == _NHWC
    nhwc = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == tuple(nhwc)


def _explicit_pads(padding: Padding, x_shape, k_shape, strides=(1, 1),
                   max_pad: bool = True) -> tuple[tuple[int, int], ...] | None:
    """(lo, hi) per spatial axis, or None when a pad is negative or (if `max_pad`) over k-1."""
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x_shape[1:3], k_shape[:2], tuple(strides), padding)
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
    for (lo, hi), k in zip(pads, k_shape[:2]):
        if min(lo, hi) < 0 or (max_pad and max(lo, hi) > k - 1):
            return None
    return tuple(tuple(p) for p in pads)


def _xla_conv(x: Array, w: Array, pads) -> Array:
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_matmul_vjp(x: Array, w: Array, pads: tuple[tuple[int, int], ...]) -> Array:
    """Stride-1 NHWC/HWIO convolution with explicit `pads`; backward as matrix products."""
    return _xla_conv(x, w, pads)


def _fwd(x, w, pads):
    return _xla_conv(x, w, pads), (x, w)


def _bwd(pads, residuals, g):
    x, w = residuals
    kh, kw, c_in, c_out = w.shape
    _, h_out, w_out, _ = g.shape
    g = g.astype(x.dtype)
    # Input gradient: correlate G with the flipped kernel, inputs and outputs swapped.
    w_flip = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    back_pads = tuple((k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, (kh, kw)))
    dx = _xla_conv(g, w_flip, back_pads)
    # Weight gradient: one [C_in, N] x [N, C_out] product per tap, N = B * H_out * W_out.
    x_pad = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    g_flat = g.reshape(-1, c_out)
    taps = []
    for i in range(kh):
        for j in range(kw):
            x_ij = lax.slice(x_pad, (0, i, j, 0), (x.shape[0], i + h_out, j + w_out, c_in))
            taps.append(lax.dot_general(x_ij.reshape(-1, c_in), g_flat,
                                        (((0,), (0,)), ((), ()))))
    dw = jnp.stack(taps).reshape(kh, kw, c_in, c_out)
    return dx, dw.astype(w.dtype)


conv_matmul_vjp.defvjp(_fwd, _bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                         padding: Padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> Array:
    """`lax.conv_general_dilated` with the same signature; oneDNN or matmul path where eligible.

    Eligible for either: NHWC/HWIO layout, no dilation, one group, non-negative pads, no
    precision/element-type request, float32 ('onednn') or equal dtypes ('matmul'). The matmul
    path also needs stride 1, pads within 0..k-1 and, unless GROUNDWORK_CONV=matmul forces
    it, C_in * C_out >= AUTO_MIN_CHANNEL_PRODUCT.
    """
    impl = current_impl()
    plain_layout = (
        impl != "xla"
        and rhs.ndim == 4 and _is_nhwc(dimension_numbers, lhs.ndim)
        and all(d in (None, 1) for d in (lhs_dilation or (1,)) + (rhs_dilation or (1,)))
        and feature_group_count == 1 and batch_group_count == 1
        and precision is None and preferred_element_type is None
        and lhs.dtype == rhs.dtype)
    if plain_layout and impl == "onednn" and lhs.dtype == jnp.float32:
        pads = _explicit_pads(padding, lhs.shape, rhs.shape, window_strides, max_pad=False)
        if pads is not None:
            return onednn_conv.conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)
    if (plain_layout and impl == "matmul" and _wide_enough(rhs.shape)
            and tuple(window_strides) == (1, 1)):
        pads = _explicit_pads(padding, lhs.shape, rhs.shape)
        if pads is not None:
            return conv_matmul_vjp(lhs, rhs, pads)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
