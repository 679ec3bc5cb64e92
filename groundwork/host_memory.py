"""Transparent huge pages for the large host allocations of training on the CPU.

XLA's CPU runtime allocates each step's buffers (activations, gradients) afresh, and glibc
serves allocations that large with new anonymous mappings, so every step first-touches every
page of them: for ResNet-18 at 84x84, batch 64, ~68,000 page faults (~280 MB) and ~0.12 s of
kernel time per step on a 2-core machine. glibc's `glibc.malloc.hugetlb=1` tunable makes
malloc ask for transparent huge pages on those mappings (madvise), which takes the faults
below 1,000 per step (README, "Training speed").

glibc reads its tunables once, when the process starts, so `reexec_with_huge_pages()`
re-executes the current command with the tunable added to GLIBC_TUNABLES; the launch
scripts call it before anything else. It does nothing, and returns, where it cannot help:
not Linux with glibc >= 2.35, transparent huge pages not in `madvise` mode (`always`
already gives them; `never` refuses them), JAX set to compute on an accelerator, or
GROUNDWORK_HUGE_PAGES=0. Imports nothing heavy, so the re-exec costs one interpreter start.
"""

import importlib.util
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
OPT_OUT = "GROUNDWORK_HUGE_PAGES"
# Modules of the JAX plugins and libraries that put JAX on an accelerator by default.
ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode (`always`, `madvise` or `never`), None where it is not exposed."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the C library this interpreter runs on, None unless it is glibc."""
    library, version = platform.libc_ver()
    if library != "glibc" or not version:
        return None
    return tuple(int(part) for part in version.split(".")[:2])


def jax_computes_on_cpu(environ: os._Environ | dict) -> bool:
    """Whether JAX will pick the CPU, decided without importing it (importing would be late).

    JAX_PLATFORMS decides when set; otherwise JAX takes an accelerator whenever a plugin for
    one is installed, so the CPU is only certain when none is.
    """
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_MODULES)


def huge_pages_would_help(environ: os._Environ | dict) -> str | None:
    """None when the re-exec should happen, else why not (for logs and tests)."""
    if environ.get(OPT_OUT, "1") == "0":
        return f"{OPT_OUT}=0"
    if TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":"):
        return "already set"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    version = glibc_version()
    if version is None or version < (2, 35):
        return f"needs glibc >= 2.35 (found {platform.libc_ver()})"
    mode = transparent_huge_page_mode()
    if mode != "madvise":
        return f"transparent huge pages are {mode!r}, not 'madvise'"
    if not jax_computes_on_cpu(environ):
        return "JAX computes on an accelerator"
    return None


def reexec_with_huge_pages() -> None:
    """Re-executes this command with glibc's hugetlb tunable where it helps; else returns."""
    if huge_pages_would_help(os.environ) is not None:
        return
    existing = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = f"{existing}:{TUNABLE}" if existing else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own options and `-m module`, which argv loses.
    os.execv(sys.executable, sys.orig_argv)
