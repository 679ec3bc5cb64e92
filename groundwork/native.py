"""Compiling and loading the project's C++ kernels, which call oneDNN.

The C++ kernels: the encoders' CPU convolutions, BatchNorm and max-pools
(groundwork/encoders/onednn_conv.cc and onednn_layers.cc, XLA FFI handlers), and label
propagation's CPU kNN search (ssl/knn_cpu.cc, through ctypes) and graph (ssl/knn_graph_cpu.cc,
XLA FFI handlers). Each is compiled with g++ on first use (a few
seconds) or by `make install`, against the oneDNN headers and library of the
`onednn-devel-cpu-gomp` package (requirements.txt), and cached beside its source; a source
(or a header beside it) newer than its build triggers a rebuild. Where that cannot happen (no
compiler, no oneDNN, not x86-64 Linux) `load` raises with the reason, and callers fall back to their
pure-Python paths.
"""

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path


def supported_platform() -> bool:
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def onednn_dirs() -> tuple[Path, Path]:
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


def build(source: Path, target: Path, extra_args: Sequence[str] = (), force: bool = False) -> Path:
    """Compiles `source` into the shared library `target` unless `target` is up to date."""
    # Headers beside the source (onednn_common.h) count as its inputs too.
    inputs = [source, *source.parent.glob("*.h")]
    if not force and target.exists() and target.stat().st_mtime >= max(
            path.stat().st_mtime for path in inputs):
        return target
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise FileNotFoundError("no C++ compiler: install g++ (apt-get install g++) or set CXX.")
    include, lib = onednn_dirs()
    # Written under a temporary name and renamed, so a concurrent loader never sees half a file.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial_path = Path(tmp.name)
    command = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
               *extra_args, f"-I{include}", str(source),
               f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(partial_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        partial_path.unlink(missing_ok=True)
        raise RuntimeError(f"building {target.name} failed:\n$ {' '.join(command)}\n"
                           f"{done.stderr[-4000:]}")
    partial_path.replace(target)
    return target


@functools.cache
def load(source: Path, target: Path, extra_args: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Builds if needed and loads `target`; raises OSError/RuntimeError with the reason."""
    if not supported_platform():
        raise OSError("the C++ kernels are built for x86-64 Linux only")
    path = build(source, target, extra_args)
    # oneDNN's OpenMP team should sleep between calls, not spin: XLA runs the fused
    # elementwise work between convolutions on its own threads, and on a 2-core machine
    # spinning OpenMP threads took their cores (ResNet-12 step 14.1 -> 16.4 img/s with
    # passive waiting). libgomp reads the policy once, when it is loaded, which is here
    # (faiss and scikit-learn bring their own copies), so the setting stays with oneDNN.
    saved = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = saved or "PASSIVE"
    try:
        return ctypes.cdll.LoadLibrary(str(path))
    finally:
        if saved is None:
            del os.environ["OMP_WAIT_POLICY"]


def ffi_compile_args() -> tuple[str, ...]:
    """Compiler arguments of an XLA FFI library: the FFI headers that ship with jaxlib."""
    import jax  # pylint: disable=import-outside-toplevel

    return (f"-I{jax.ffi.include_dir()}",)


def load_ffi(source: Path, target: Path, handlers: dict[str, str]) -> ctypes.CDLL:
    """`load`s an XLA FFI library and registers `handlers` (target name -> symbol) for CPU."""
    import jax  # pylint: disable=import-outside-toplevel

    library = load(source, target, ffi_compile_args())
    for name, symbol in handlers.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    return library


class FfiLibrary:
    """One of the project's XLA FFI libraries: its source, its build beside it (one per jaxlib
    version) and the handlers (target name -> symbol) it registers for CPU on first load.

    A failed build or load is kept, with its reason, so it is not retried on every call.
    """

    def __init__(self, source: Path, handlers: dict[str, str], description: str):
        self.source, self.handlers, self.description = source, dict(handlers), description

    def path(self) -> Path:
        import jaxlib  # pylint: disable=import-outside-toplevel

        return self.source.with_name(f"_{self.source.stem}_jaxlib{jaxlib.__version__}.so")

    def build(self, force: bool = False) -> Path:
        """Compiles the source unless an up-to-date build exists; returns the library path."""
        return build(self.source, self.path(), ffi_compile_args(), force)

    @functools.cached_property
    def _loaded(self) -> tuple[ctypes.CDLL | None, str | None]:
        try:
            return load_ffi(self.source, self.path(), self.handlers), None
        except (OSError, RuntimeError) as error:
            return None, str(error)

    def unavailable_reason(self) -> str | None:
        """Why the handlers cannot run here, or None once they are built and registered."""
        return self._loaded[1]

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def require(self) -> ctypes.CDLL:
        """The loaded library; raises RuntimeError with the reason where there is none."""
        library, reason = self._loaded
        if library is None:
            raise RuntimeError(f"{self.description} unavailable: {reason}")
        return library

    def report(self, without_it: str) -> bool:
        """Builds if needed and prints where the library is, or why there is none and
        `without_it` (what that costs); for `make install`."""
        reason = self.unavailable_reason()
        if reason is None:
            print(f"{self.description} ready: {self.path()}")
        else:
            print(f"warning: {self.description} unavailable, {without_it}: {reason}",
                  file=sys.stderr)
        return reason is None
