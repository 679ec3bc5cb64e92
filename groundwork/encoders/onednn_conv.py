"""2-D convolutions on CPU through oneDNN: the handlers of onednn_conv.cc behind a custom VJP.

XLA's CPU backend lowers convolutions to Eigen, which reaches about a quarter of the FLOP/s
that oneDNN's JIT kernels (what PyTorch runs on CPU) reach on the same cores: one 3x3
160->160 convolution at 42x42, batch 16, forward + both gradients, ran at 106 GFLOP/s under
XLA and 437 through these handlers on the 2-core development machine. `conv` computes the
same function as `lax.conv_general_dilated` on float32 NHWC/HWIO inputs with any strides
and non-negative explicit pads; its gradients are oneDNN's backward-data and
backward-weights primitives. fast_conv.py decides where it is used (CPU only).

The shared library is compiled from onednn_conv.cc on first use (about 3 s) by
groundwork/native.py, against oneDNN and jaxlib's FFI headers, and cached next to this file,
one build per jaxlib version. `make install` builds it explicitly and reports what
it found (`onednn_conv.report()`). Where it cannot be built (no
C++ compiler, no oneDNN, not x86-64 Linux) `available()` is False, fast_conv.py keeps its
pure-JAX path and says why once.
"""

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import native

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

LIBRARY = native.FfiLibrary(
    Path(__file__).with_name("onednn_conv.cc"),
    {"groundwork_onednn_conv_forward": "GroundworkOnednnConvForward",
     "groundwork_onednn_conv_input_gradient": "GroundworkOnednnConvInputGradient",
     "groundwork_onednn_conv_weight_gradient": "GroundworkOnednnConvWeightGradient"},
    "oneDNN convolutions")


# Module-level names: the callers and the tests use (and patch) these.
unavailable_reason = LIBRARY.unavailable_reason
available = LIBRARY.available


@functools.cache
def warn_unavailable() -> None:
    """Says once, when CPU convolutions fall back to the slower pure-JAX path, why."""
    warnings.warn(f"oneDNN convolutions unavailable ({unavailable_reason()}); CPU "
                  "convolutions use XLA with a matmul backward, about 2x slower for training. "
                  "`onednn_conv.report()` shows the build error.",
                  stacklevel=3)


def output_shape(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
                 pads: Pads) -> tuple[int, int, int, int]:
    n, h, w, _ = x_shape
    kh, kw, _, c_out = w_shape
    return (n, (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1,
            (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1, c_out)


def _call(which: str, a: Array, b: Array, result_shape, strides, pads: Pads) -> Array:
    LIBRARY.require()
    # broadcast_all: under vmap every operand gets the batch axis, and the handler runs one
    # convolution per slice (implanting vmaps over episodes with per-episode kernels).
    return jax.ffi.ffi_call(f"groundwork_onednn_conv_{which}",
                            jax.ShapeDtypeStruct(result_shape, jnp.float32),
                            vmap_method="broadcast_all")(
        a, b, strides=np.asarray(strides, np.int64),
        pads=np.asarray([p for pair in pads for p in pair], np.int64))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: Array, w: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """float32 NHWC x HWIO -> NHWC convolution, `pads` = ((top, bottom), (left, right)) >= 0."""
    return _call("forward", x, w, output_shape(x.shape, w.shape, strides, pads), strides, pads)


def _conv_fwd(x, w, strides, pads):
    return conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, g):
    x, w = residuals
    g = g.astype(jnp.float32)
    return (_call("input_gradient", g, w, x.shape, strides, pads),
            _call("weight_gradient", x, g, w.shape, strides, pads))


conv.defvjp(_conv_fwd, _conv_bwd)


def report() -> bool:
    """Builds if needed and prints where the library is or why there is none (`make install`)."""
    return LIBRARY.report("CPU training will be slower")
