"""2-D convolutions on CPU through oneDNN: the handlers of onednn_conv.cc behind a custom VJP.

XLA's CPU backend lowers convolutions to Eigen, which reaches about a quarter of the FLOP/s
that oneDNN's JIT kernels (what PyTorch runs on CPU) reach on the same cores: one 3x3
160->160 convolution at 42x42, batch 16, forward + both gradients, ran at 106 GFLOP/s under
XLA and 437 through these handlers on the 2-core development machine. `conv` computes the
same function as `lax.conv_general_dilated` on float32 NHWC/HWIO inputs with any strides
and non-negative explicit pads; its gradients are oneDNN's backward-data and
backward-weights primitives. fast_conv.py decides where it is used (CPU only).

The shared library is compiled from onednn_conv.cc on first use (about 3 s), against the
oneDNN headers and library of the `onednn-devel-cpu-gomp` package (requirements.txt) and
jaxlib's FFI headers, and cached next to this file, one build per jaxlib version; a source
newer than the build triggers a rebuild. `make install` builds it explicitly and reports what
it found (`onednn_conv.report()`). Where it cannot be built (no
C++ compiler, no oneDNN, not x86-64 Linux) `available()` is False, fast_conv.py keeps its
pure-JAX path and says why once.
"""

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

SOURCE = Path(__file__).with_name("onednn_conv.cc")
_HANDLERS = {"forward": "GroundworkOnednnConvForward",
             "input_gradient": "GroundworkOnednnConvInputGradient",
             "weight_gradient": "GroundworkOnednnConvWeightGradient"}


def library_path() -> Path:
    """Where the compiled handlers live: beside the source, named by the jaxlib version."""
    return SOURCE.with_name(f"_onednn_conv_jaxlib{jaxlib.__version__}.so")


def _onednn_dirs() -> tuple[Path, Path]:
    """(include dir, lib dir) of oneDNN: $ONEDNN_ROOT, else this Python's prefix."""
    roots = [Path(os.environ["ONEDNN_ROOT"])] if os.environ.get("ONEDNN_ROOT") else []
    roots += [Path(sys.prefix), Path(sysconfig.get_config_var("prefix") or sys.prefix)]
    for root in roots:
        include, lib = root / "include", root / "lib"
        if (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() and any(lib.glob("libdnnl.so*")):
            return include, lib
    searched = ", ".join(str(r) for r in roots)
    raise FileNotFoundError(
        f"oneDNN headers/library not found under {searched} (looked for include/oneapi/dnnl/"
        "dnnl.hpp and lib/libdnnl.so): `pip install onednn-devel-cpu-gomp` (requirements.txt) "
        "or set ONEDNN_ROOT to a oneDNN 3.x install.")


def build(force: bool = False) -> Path:
    """Compiles onednn_conv.cc unless an up-to-date build exists; returns the library path."""
    target = library_path()
    if not force and target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise FileNotFoundError("no C++ compiler: install g++ (apt-get install g++) or set CXX.")
    include, lib = _onednn_dirs()
    # Written under a temporary name and renamed, so a concurrent loader never sees half a file.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial_path = Path(tmp.name)
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE),
               f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(partial_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        partial_path.unlink(missing_ok=True)
        raise RuntimeError(f"building {target.name} failed:\n$ {' '.join(command)}\n"
                           f"{done.stderr[-4000:]}")
    partial_path.replace(target)
    return target


@functools.cache
def _registered() -> str | None:
    """Builds and registers the handlers once; None if that worked, else the reason."""
    if not (sys.platform == "linux" and os.uname().machine == "x86_64"):
        return "oneDNN convolutions are built for x86-64 Linux only"
    try:
        path = build()
        # oneDNN's OpenMP team should sleep between convolutions, not spin: XLA runs the
        # fused elementwise work between them on its own threads, and on a 2-core machine
        # spinning OpenMP threads took their cores (ResNet-12 step 14.1 -> 16.4 img/s with
        # passive waiting). libgomp reads the policy once, when it is loaded, which is here
        # (faiss and scikit-learn bring their own copies), so the setting stays with oneDNN.
        saved = os.environ.get("OMP_WAIT_POLICY")
        os.environ["OMP_WAIT_POLICY"] = saved or "PASSIVE"
        try:
            library = ctypes.cdll.LoadLibrary(str(path))
        finally:
            if saved is None:
                del os.environ["OMP_WAIT_POLICY"]
    except (OSError, RuntimeError) as error:
        return str(error)
    for name, symbol in _HANDLERS.items():
        jax.ffi.register_ffi_target(f"groundwork_onednn_conv_{name}",
                                    jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return None


def unavailable_reason() -> str | None:
    """Why the oneDNN path cannot run here, or None when it can."""
    return _registered()


def available() -> bool:
    return _registered() is None


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
    reason = _registered()
    if reason is not None:
        raise RuntimeError(f"oneDNN convolutions unavailable: {reason}")
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
    reason = unavailable_reason()
    if reason is None:
        print(f"oneDNN convolutions ready: {library_path()}")
    else:
        print(f"warning: oneDNN convolutions unavailable, CPU training will be slower: {reason}",
              file=sys.stderr)
    return reason is None
