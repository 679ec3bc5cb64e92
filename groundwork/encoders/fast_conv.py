"""A drop-in `lax.conv_general_dilated` whose backward pass is fast on XLA's CPU backend.

XLA CPU runs the forward 2-D convolution well but its backward convolutions at about half
that speed (see the training-speed benchmark, benchmarks/train_speed.py). For stride-1,
undilated, ungrouped NHWC/HWIO convolutions this module keeps XLA's forward and gives it a
custom VJP:

  weight gradient: dW[i, j] = X_ij^T G, one matrix product per kernel tap, where X_ij is the
    padded input shifted by (i, j) and flattened to [B*H_out*W_out, C_in] and G the output
    gradient flattened to [B*H_out*W_out, C_out];
  input gradient: a forward convolution of G with the spatially flipped, in/out-swapped
    kernel, padded by (k - 1 - pad) on each side.

The result is the same function with the same gradients (to float rounding); every other
convolution, and every convolution on GPU/TPU, goes to `lax.conv_general_dilated` unchanged.
Encoders pass `conv_general_dilated` to `flax.linen.Conv(conv_general_dilated=...)`, so
parameters keep their names and shapes and checkpoints move freely between the two paths.

Which path runs is decided when a function is traced: `select_impl(jax.default_backend(),
os.environ.get("GROUNDWORK_CONV"))`, where GROUNDWORK_CONV may be 'auto' (default: matmul
on CPU only, for kernels with at least `AUTO_MIN_CHANNEL_PRODUCT` = C_in * C_out), 'matmul'
(every eligible convolution) or 'xla' (never).
"""

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

IMPLS = ("auto", "matmul", "xla")
# Under 'auto', narrower kernels keep XLA's backward: a [C_in, N] x [N, C_out] product with a
# small output (64 x 64) parallelises poorly, and on a 2-core machine the matmul path lost to
# XLA there (Conv-4 at 28x28: 350 vs 424 img/s) while winning from 64 x 160 up.
AUTO_MIN_CHANNEL_PRODUCT = 64 * 128
_NHWC = ("NHWC", "HWIO", "NHWC")


def select_impl(backend: str, override: str | None = None) -> str:
    """'matmul' or 'xla': the convolution path for `backend` ('cpu', 'gpu', 'tpu', ...).

    `override` (the GROUNDWORK_CONV variable) forces a path; None or 'auto' picks the
    matmul backward on CPU only, where it is faster; accelerators keep XLA's own.
    """
    choice = override or "auto"
    if choice not in IMPLS:
        raise ValueError(f"GROUNDWORK_CONV={choice!r}; set it to one of {list(IMPLS)} or unset it.")
    if choice == "auto":
        return "matmul" if backend == "cpu" else "xla"
    return choice


def current_impl() -> str:
    """The path `conv_general_dilated` takes when traced now: 'matmul' or 'xla'."""
    return select_impl(jax.default_backend(), os.environ.get("GROUNDWORK_CONV"))


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


def _explicit_pads(padding: Padding, x_shape, k_shape) -> tuple[tuple[int, int], ...] | None:
    """(lo, hi) per spatial axis, or None when a pad is outside 0..k-1 (not handled here)."""
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x_shape[1:3], k_shape[:2], (1, 1), padding)
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
    for (lo, hi), k in zip(pads, k_shape[:2]):
        if not (0 <= lo <= k - 1 and 0 <= hi <= k - 1):
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
    """`lax.conv_general_dilated` with the same signature; the matmul backward where eligible.

    Eligible: the 'matmul' path is selected (see `select_impl`), NHWC/HWIO layout, stride 1,
    no dilation, one group, pads within 0..k-1, no precision/element-type request and, unless
    GROUNDWORK_CONV=matmul forces it, C_in * C_out >= AUTO_MIN_CHANNEL_PRODUCT.
    """
    eligible = (
        current_impl() == "matmul"
        and rhs.ndim == 4 and _wide_enough(rhs.shape)
        and _is_nhwc(dimension_numbers, lhs.ndim)
        and tuple(window_strides) == (1, 1)
        and all(d in (None, 1) for d in (lhs_dilation or (1,)) + (rhs_dilation or (1,)))
        and feature_group_count == 1 and batch_group_count == 1
        and precision is None and preferred_element_type is None
        and lhs.dtype == rhs.dtype)
    pads = _explicit_pads(padding, lhs.shape, rhs.shape) if eligible else None
    if pads is None:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    return conv_matmul_vjp(lhs, rhs, pads)
