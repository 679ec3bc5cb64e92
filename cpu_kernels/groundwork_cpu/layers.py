"""BatchNorm and max-pooling, computed by oneDNN (csrc/onednn_layers.cc) where oneDNN can.

Once the convolutions run on oneDNN, most of what is left of a ResNet step on XLA's CPU
backend is BatchNorm and pooling, each lowered to several passes over the activations, and
the pools' gradient to select-and-scatter, which XLA's CPU backend runs slowly. These are the
same functions computed by oneDNN's kernels, which PyTorch also uses (NOTES.md has the times):

  `BatchNorm`: `flax.linen.BatchNorm` with the same fields, variables, initial values and
    running-average rule; training mode (batch statistics) on float32 input and parameters
    normalises with oneDNN's forward and backward, every other case is flax's own code.
  `max_pool`: `flax.linen.max_pool`; float32 NHWC input runs on oneDNN, whose pads never win
    the max (as flax pads with -inf), and whose backward routes each output gradient to the
    position that held the maximum (the first of tied maxima, where XLA's select-and-scatter
    may choose another; both are gradients of max).
"""

import ctypes
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from groundwork_cpu import _native

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

LIBRARY = _native.Library(
    'onednn_layers',
    'oneDNN BatchNorm and max-pool',
    {
        'groundwork_cpu_batch_norm_forward': 'GroundworkCpuBatchNormForward',
        'groundwork_cpu_batch_norm_backward': 'GroundworkCpuBatchNormBackward',
        'groundwork_cpu_max_pool_forward': 'GroundworkCpuMaxPoolForward',
        'groundwork_cpu_max_pool_backward': 'GroundworkCpuMaxPoolBackward',
    },
)
_HANDLE = _native.load(LIBRARY)
_HANDLE.groundwork_cpu_max_pool_workspace_bytes.restype = ctypes.c_int64
_HANDLE.groundwork_cpu_max_pool_workspace_bytes.argtypes = [ctypes.POINTER(ctypes.c_int64)]


# ------------------------------------------------------------------------------ BatchNorm


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm`, computed by oneDNN in training mode on float32.

  oneDNN serves the case the encoders train with: batch statistics, feature axis last, float32
  input, parameters and result, no cross-device axis, no mask. Everything else (running
  averages, other dtypes or axes) runs flax's code unchanged.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    batch_statistics = not nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average
    )
    if not (batch_statistics and self._onednn_serves(x, mask)):
      return super().__call__(x, use_running_average, mask=mask)
    # The variables flax creates, in its order, with its initialisers.
    shape = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), shape)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), shape)
    scale = (
        self.param('scale', self.scale_init, shape, self.param_dtype)
        if self.use_scale
        else jnp.ones(shape, jnp.float32)
    )
    bias = (
        self.param('bias', self.bias_init, shape, self.param_dtype)
        if self.use_bias
        else jnp.zeros(shape, jnp.float32)
    )
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y

  def _onednn_serves(self, x, mask) -> bool:
    float32 = jnp.dtype(jnp.float32)
    axes = self.axis if isinstance(self.axis, Sequence) else (self.axis,)
    return (
        x.dtype == float32
        and jnp.dtype(self.param_dtype) == float32
        and (self.dtype is None or jnp.dtype(self.dtype) == float32)
        and x.ndim >= 2
        and x.size > 0
        and {a % x.ndim for a in axes} == {x.ndim - 1}
        and self.axis_name is None
        and mask is None
    )


def _norm_forward(x: Array, scale: Array, bias: Array, epsilon: float):
  channels = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
  return jax.ffi.ffi_call(
      'groundwork_cpu_batch_norm_forward',
      (jax.ShapeDtypeStruct(x.shape, jnp.float32), channels, channels),
      vmap_method='broadcast_all',
  )(x, scale, bias, epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float):
  """float32 `x` [..., C] normalised by its batch statistics over every axis but the last:
  (scale * x_hat + bias, mean, var), var the biased variance (as flax keeps it)."""
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
        'groundwork_cpu_batch_norm_backward',
        (
            jax.ShapeDtypeStruct(x.shape, jnp.float32),
            jax.ShapeDtypeStruct(scale.shape, jnp.float32),
            jax.ShapeDtypeStruct(scale.shape, jnp.float32),
        ),
        vmap_method='broadcast_all',
    )(x, g_y.astype(jnp.float32), scale, mean, var, epsilon=np.float32(epsilon))
  # The statistics are outputs too; a training step only feeds them to the running averages
  # (no gradient), so these terms are skipped unless something differentiates them.
  rows = x.size // x.shape[-1]
  if not isinstance(g_mean, SymbolicZero):
    dx = dx + g_mean / rows
  if not isinstance(g_var, SymbolicZero):
    dx = dx + g_var * 2.0 * (x - mean) / rows
  return dx, d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd, symbolic_zeros=True)


# ------------------------------------------------------------------------------ max-pool


def max_pool(
    inputs: Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = 'VALID',
) -> Array:
  """`flax.linen.max_pool`: oneDNN for float32 NHWC input, else XLA.

  On XLA, the 2x2/2 pool and the 3x3/2 pad-1 pool of a ResNet stem are written as a reshape
  and as the maximum of nine strided shifts: XLA's CPU backend runs `reduce_window`'s
  gradient (select-and-scatter) several times slower than these forms' gradients. Their
  values are the same; so are their gradients but where a window holds tied maxima, which
  they share out and select-and-scatter gives to one (both are gradients of max).
  """
  window = tuple(int(w) for w in window_shape)
  strides = tuple(int(s) for s in strides) if strides is not None else (1,) * len(window)
  if inputs.ndim != 4 or len(window) != 2 or len(strides) != 2:
    return nn.max_pool(inputs, window, strides, padding)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(inputs.shape[1:3], window, strides, padding)
  else:
    pads = [tuple(int(v) for v in pair) for pair in padding]
  if len(pads) != 2 or any(len(pair) != 2 for pair in pads):
    return nn.max_pool(inputs, window, strides, padding)  # flax says what is wrong
  pads = (tuple(pads[0]), tuple(pads[1]))
  if inputs.dtype == jnp.float32 and _onednn_serves(inputs.shape, window, strides, pads):
    return onednn_max_pool(inputs, window, strides, pads)
  if jnp.issubdtype(inputs.dtype, jnp.floating):
    if window == (2, 2) and strides == (2, 2) and pads == ((0, 0), (0, 0)):
      return _max_pool2(inputs)
    if window == (3, 3) and strides == (2, 2) and pads == ((1, 1), (1, 1)):
      return _max_pool3_stride2(inputs)
  return nn.max_pool(inputs, window, strides, padding)


def _onednn_serves(shape, window, strides, pads: Pads) -> bool:
  # Pads below the window keep a real value in every window, as -inf padding needs: a window
  # wholly inside the pads would be -inf in flax and something else in oneDNN.
  if (
      min(shape) < 1
      or min(strides) < 1
      or any(not 0 <= p < k for pair, k in zip(pads, window) for p in pair)
  ):
    return False
  _, oh, ow, _ = output_shape(shape, window, strides, pads)
  return oh >= 1 and ow >= 1 and _workspace_bytes(_geometry(shape, window, strides, pads)) >= 0


def _max_pool2(x: Array) -> Array:
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool3_stride2(x: Array) -> Array:
  b, h, w, c = x.shape
  h_out, w_out = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  shifts = [
      lax.slice(padded, (0, i, j, 0), (b, i + 2 * h_out - 1, j + 2 * w_out - 1, c), (1, 2, 2, 1))
      for i in range(3)
      for j in range(3)
  ]
  return functools.reduce(jnp.maximum, shifts)


def output_shape(
    x_shape: Sequence[int], window: Sequence[int], strides: Sequence[int], pads: Pads
) -> tuple[int, int, int, int]:
  """NHWC output shape, odd remainders dropped (as flax, and torch's `MaxPool2d`)."""
  n, h, w, c = x_shape
  return (
      n,
      (h + pads[0][0] + pads[0][1] - window[0]) // strides[0] + 1,
      (w + pads[1][0] + pads[1][1] - window[1]) // strides[1] + 1,
      c,
  )


def _geometry(x_shape, window, strides, pads) -> tuple[int, ...]:
  n, h, w, c = x_shape
  _, oh, ow, _ = output_shape(x_shape, window, strides, pads)
  return (n, h, w, c, oh, ow, *window, *strides, *pads[0], *pads[1])


@functools.cache
def _workspace_bytes(geometry: tuple[int, ...]) -> int:
  """Bytes of the workspace (where each maximum came from) of one slice; -1 where oneDNN
  rejects the geometry (n, h, w, c, oh, ow, window, strides, pads)."""
  return _HANDLE.groundwork_cpu_max_pool_workspace_bytes((ctypes.c_int64 * 14)(*geometry))


def _attrs(window, strides, pads) -> dict:
  return dict(
      window=np.asarray(window, np.int64),
      strides=np.asarray(strides, np.int64),
      pads=np.asarray([p for pair in pads for p in pair], np.int64),
  )


def _pool_forward(x: Array, window, strides, pads) -> tuple[Array, Array]:
  geometry = _geometry(x.shape[-4:], window, strides, pads)
  y_shape = x.shape[:-4] + output_shape(x.shape[-4:], window, strides, pads)
  return jax.ffi.ffi_call(
      'groundwork_cpu_max_pool_forward',
      (
          jax.ShapeDtypeStruct(y_shape, jnp.float32),
          jax.ShapeDtypeStruct(x.shape[:-4] + (_workspace_bytes(geometry),), jnp.uint8),
      ),
      vmap_method='broadcast_all',
  )(x, **_attrs(window, strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def onednn_max_pool(
    x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads
) -> Array:
  """float32 NHWC max-pool on oneDNN; `pads` = ((top, bottom), (left, right)), each below
  the window, padded cells never win."""
  return _pool_forward(x, window, strides, pads)[0]


def _max_pool_fwd(x, window, strides, pads):
  y, workspace = _pool_forward(x, window, strides, pads)
  return y, (workspace, x.shape)


def _max_pool_bwd(window, strides, pads, residuals, g):
  workspace, x_shape = residuals
  dx = jax.ffi.ffi_call(
      'groundwork_cpu_max_pool_backward',
      jax.ShapeDtypeStruct(x_shape, jnp.float32),
      vmap_method='broadcast_all',
  )(g.astype(jnp.float32), workspace, **_attrs(window, strides, pads))
  return (dx,)


onednn_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
