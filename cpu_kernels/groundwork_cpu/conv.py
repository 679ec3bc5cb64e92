"""`conv_general_dilated`: lax's convolution, computed by oneDNN where oneDNN can.

XLA's CPU backend lowers convolutions to Eigen, which reaches a quarter to a half of what
oneDNN's JIT kernels (PyTorch's CPU convolutions) reach on the same cores. This drop-in for
`jax.lax.conv_general_dilated` sends float32 NHWC x HWIO -> NHWC convolutions without
dilation, in one group, with non-negative pads (any strides) to csrc/onednn_conv.cc's three
handlers (forward, input gradient, weight gradient) behind a custom VJP; every other
convolution goes to lax unchanged. Pass it to `flax.linen.Conv(conv_general_dilated=...)`:
parameter names and shapes stay those of the plain layer, so checkpoints move freely.

Only the CPU runs the handlers: the caller decides to use this function when JAX computes on
the CPU (groundwork/backend.py). On the CPU every `precision` computes in float32, so any
precision is served. Reverse-mode differentiation only (the custom VJP): no `jvp`, no second
derivatives. The rules the handlers follow inside (NHWC or blocked layout, primitive or patch
product) are fixed in the C++ and described, with their measurements, in NOTES.md.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from groundwork_cpu import _native

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

LIBRARY = _native.Library(
    'onednn_conv',
    'oneDNN convolutions',
    {
        'groundwork_cpu_conv_forward': 'GroundworkCpuConvForward',
        'groundwork_cpu_conv_input_gradient': 'GroundworkCpuConvInputGradient',
        'groundwork_cpu_conv_weight_gradient': 'GroundworkCpuConvWeightGradient',
    },
)
_native.load(LIBRARY)

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _is_nhwc(dimension_numbers: Any) -> bool:
  if dimension_numbers is None:  # lax's default is NCHW / OIHW
    return False
  if isinstance(dimension_numbers, (tuple, list)) and all(
      isinstance(spec, str) for spec in dimension_numbers
  ):
    return tuple(dimension_numbers) == _NHWC
  return tuple(dimension_numbers) == tuple(
      lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  )


def _undilated(dilation) -> bool:
  return dilation is None or all(int(d) == 1 for d in dilation)


def onednn_pads(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    preferred_element_type=None,
) -> Pads | None:
  """The explicit ((top, bottom), (left, right)) pads with which oneDNN computes this
  convolution, or None when it goes to lax."""
  float32 = jnp.dtype(jnp.float32)
  if not (
      getattr(lhs, 'dtype', None) == float32
      and getattr(rhs, 'dtype', None) == float32
      and np.ndim(lhs) == 4
      and np.ndim(rhs) == 4
      and _is_nhwc(dimension_numbers)
      and _undilated(lhs_dilation)
      and _undilated(rhs_dilation)
      and feature_group_count == 1
      and batch_group_count == 1
      and (preferred_element_type is None or jnp.dtype(preferred_element_type) == float32)
      and len(window_strides) == 2
      and all(int(s) >= 1 for s in window_strides)
      and lhs.shape[3] == rhs.shape[2]
      and min(lhs.shape) > 0
      and min(rhs.shape) > 0
  ):
    return None
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], tuple(window_strides), padding)
  else:
    pads = [tuple(int(v) for v in pair) for pair in padding]
  if len(pads) != 2 or any(len(pair) != 2 or min(pair) < 0 for pair in pads):
    return None
  if any(size + lo + hi < k for size, (lo, hi), k in zip(lhs.shape[1:3], pads, rhs.shape[:2])):
    return None  # an empty output: lax's business
  return (tuple(pads[0]), tuple(pads[1]))


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> Array:
  """`jax.lax.conv_general_dilated`, same signature and result; oneDNN where it applies
  (see the module docstring), lax otherwise."""
  pads = onednn_pads(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      batch_group_count,
      preferred_element_type,
  )
  if pads is not None:
    return conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)
  return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )


def output_shape(
    x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int], pads: Pads
) -> tuple[int, int, int, int]:
  n, h, w, _ = x_shape
  kh, kw, _, c_out = w_shape
  return (
      n,
      (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1,
      (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1,
      c_out,
  )


def _call(which: str, a: Array, b: Array, result_shape, strides, pads: Pads) -> Array:
  # broadcast_all: under vmap every operand gets the batch axis, and the handler runs one
  # convolution per slice (implanting vmaps over episodes with per-episode kernels).
  return jax.ffi.ffi_call(
      f'groundwork_cpu_conv_{which}',
      jax.ShapeDtypeStruct(result_shape, jnp.float32),
      vmap_method='broadcast_all',
  )(
      a,
      b,
      strides=np.asarray(strides, np.int64),
      pads=np.asarray([p for pair in pads for p in pair], np.int64),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: Array, w: Array, strides: tuple[int, int], pads: Pads) -> Array:
  """float32 NHWC x HWIO -> NHWC convolution, `pads` = ((top, bottom), (left, right)) >= 0."""
  return _call('forward', x, w, output_shape(x.shape, w.shape, strides, pads), strides, pads)


def _conv_fwd(x, w, strides, pads):
  return conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, g):
  x, w = residuals
  g = g.astype(jnp.float32)
  return (
      _call('input_gradient', g, w, x.shape, strides, pads),
      _call('weight_gradient', x, g, w.shape, strides, pads),
  )


conv.defvjp(_conv_fwd, _conv_bwd)
