"""The host memory allocator for training on the CPU: keep freed pages instead of refaulting them.

XLA's CPU runtime allocates each step's buffers (activations, gradients) afresh, and glibc's
malloc serves allocations that large with new mappings and unmaps them when freed, so every
step first-touches every page again: for ResNet-18 at 84x84, batch 64, ~68,000 page faults
(~280 MB) and 0.1-0.3 s of kernel time per step on the 2-core machine, worst after any pause
(the kernel hands freed memory back to the hypervisor). PyTorch reuses its (smaller) blocks
from glibc's heap and barely notices.

`reexec_with_fast_allocator()` re-executes the current command, before JAX starts, with the
allocator that fixes this where one is available (choice: GROUNDWORK_ALLOCATOR=auto|jemalloc|
hugepages|system, default auto = the first that applies):
  jemalloc: LD_PRELOAD of libjemalloc (Debian: `apt-get install libjemalloc2`, which
    `make test` does), with MALLOC_CONF keeping freed large blocks for reuse for 30 s
    (`oversize_threshold:0` stops jemalloc from returning big blocks at once): no page
    faults in steady state. PyTorch's CPU tuning guide recommends the same preload.
  hugepages: glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35, transparent huge
    pages in `madvise` mode): the same faults in 2 MiB pages, ~500 per step.
  system: leave malloc alone.
Both settings are environment variables read once when a process starts, hence the re-exec;
they pass to child processes (the PyTorch side of benchmarks/train_speed.py runs under the
same allocator). Nothing happens where JAX is set to compute on an accelerator. Figures:
README, "Training speed against PyTorch".
"""

import importlib.util
import os
import platform
import sys

CHOICE = "GROUNDWORK_ALLOCATOR"
CHOICES = ("auto", "jemalloc", "hugepages", "system")
# Set in the re-executed process, so it never re-executes again.
DONE = "GROUNDWORK_ALLOCATOR_SET"
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2",
                  "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
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


def find_jemalloc(environ) -> str | None:
    """Path of libjemalloc: $CONDA_PREFIX/lib, then the system's library directories."""
    prefix = environ.get("CONDA_PREFIX")
    candidates = ((os.path.join(prefix, "lib", "libjemalloc.so.2"),) if prefix else ())
    return next((p for p in candidates + JEMALLOC_PATHS if os.path.exists(p)), None)


def jax_computes_on_cpu(environ) -> bool:
    """Whether JAX will pick the CPU, decided without importing it (importing would be late).

    JAX_PLATFORMS decides when set; otherwise JAX takes an accelerator whenever a plugin for
    one is installed, so the CPU is only certain when none is.
    """
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_MODULES)


def allocator_settings(environ) -> tuple[str, dict[str, str]]:
    """(allocator, environment variables to set) for this machine; ("system", {}) to do nothing.

    Raises ValueError for a GROUNDWORK_ALLOCATOR it does not know, or a choice that this
    machine cannot honour (jemalloc not installed, huge pages unavailable).
    """
    choice = environ.get(CHOICE, "auto")
    if choice not in CHOICES:
        raise ValueError(f"{CHOICE}={choice!r}: choose one of {', '.join(CHOICES)}.")
    if choice == "system" or environ.get(DONE) or not sys.platform.startswith("linux"):
        return "system", {}
    if choice == "auto" and not jax_computes_on_cpu(environ):
        return "system", {}
    if choice in ("auto", "jemalloc"):
        library = find_jemalloc(environ)
        if library is not None:
            preload = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
            return "jemalloc", {"LD_PRELOAD": preload,
                                "MALLOC_CONF": environ.get("MALLOC_CONF", JEMALLOC_CONF)}
        if choice == "jemalloc":
            raise ValueError(f"{CHOICE}=jemalloc but libjemalloc.so.2 is not in "
                             f"{', '.join(JEMALLOC_PATHS)}: `apt-get install libjemalloc2`.")
    version, mode = glibc_version(), transparent_huge_page_mode()
    if version is not None and version >= (2, 35) and mode == "madvise":
        tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
        return "hugepages", {"GLIBC_TUNABLES": ":".join([*tunables, HUGETLB_TUNABLE])}
    if choice == "hugepages":
        raise ValueError(f"{CHOICE}=hugepages needs glibc >= 2.35 (found {platform.libc_ver()}) "
                         f"and transparent huge pages in 'madvise' mode (found {mode!r}).")
    return "system", {}


def reexec_with_fast_allocator() -> None:
    """Re-executes this command under `allocator_settings`; returns where there is nothing to do."""
    allocator, settings = allocator_settings(os.environ)
    if not settings:
        return
    os.environ.update(settings, **{DONE: allocator})
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own options and `-m module`, which argv loses.
    os.execv(sys.executable, sys.orig_argv)
