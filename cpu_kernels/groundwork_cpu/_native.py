"""Loading the package's C++ libraries, which setup.py built at install time.

Each library lies in groundwork_cpu/lib/<name>.so and carries the jaxlib version whose XLA
FFI headers it was compiled with. `load` opens it, refuses it when this process runs another
jaxlib (a handler is only known to work with the XLA it was compiled for), and registers its
FFI handlers for the CPU. Nothing is ever compiled here: a missing or unloadable library is an
ImportError that names the file and the command that rebuilds it.
"""

import contextlib
import ctypes
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import jaxlib

LIB_DIR = Path(__file__).with_name('lib')
REINSTALL = 'pip install --no-build-isolation ./cpu_kernels  (from the repository root)'


@dataclasses.dataclass(frozen=True)
class Library:
  """One built library: its file stem under lib/, what it is, and its XLA FFI handlers
  (target name -> exported symbol; none for a library called through ctypes)."""

  name: str
  description: str
  handlers: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def path(self) -> Path:
    return LIB_DIR / f'{self.name}.so'


# Each library loaded so far, with its handle: for `report()`.
LOADED: dict[str, tuple[Library, ctypes.CDLL]] = {}


@contextlib.contextmanager
def _passive_openmp() -> Iterator[None]:
  # oneDNN's OpenMP team should sleep between calls, not spin: XLA runs the fused elementwise
  # work between convolutions on its own threads, and on a small machine spinning OpenMP
  # threads take the cores it needs (NOTES.md has the measurement). libgomp reads the policy
  # once, when it is loaded, which is when the first of these libraries is (faiss and
  # scikit-learn bring their own copies), so the setting stays with oneDNN and the rest of
  # the process keeps its environment.
  saved = os.environ.get('OMP_WAIT_POLICY')
  os.environ['OMP_WAIT_POLICY'] = saved or 'PASSIVE'
  try:
    yield
  finally:
    if saved is None:
      del os.environ['OMP_WAIT_POLICY']


def _string(library: ctypes.CDLL, symbol: str) -> str:
  function = getattr(library, symbol)
  function.restype = ctypes.c_char_p
  return function().decode()


def check_jaxlib(library: Library, built_for: str, running: str) -> None:
  """Raises ImportError unless `library`, built against jaxlib `built_for`, may register its
  FFI handlers with jaxlib `running`."""
  if library.handlers and built_for != running:
    raise ImportError(
        f'groundwork_cpu: {library.path} was built against jaxlib {built_for}, '
        f'but this process runs jaxlib {running}; rebuild it: {REINSTALL}'
    )


def load(library: Library) -> ctypes.CDLL:
  """Opens `library`, checks its jaxlib and registers its FFI handlers for the CPU."""
  if sys.platform != 'linux' or os.uname().machine != 'x86_64':
    raise ImportError('groundwork_cpu: the CPU kernels are built for x86-64 Linux only.')
  path = library.path
  if not path.exists():
    raise ImportError(
        f'groundwork_cpu: {path} ({library.description}) is missing: the '
        f'package was not built, or its build was removed; reinstall: {REINSTALL}'
    )
  try:
    with _passive_openmp():
      handle = ctypes.CDLL(str(path))
    built_for = _string(handle, 'groundwork_cpu_jaxlib_version')
    handlers = {target: getattr(handle, symbol) for target, symbol in library.handlers.items()}
  except (OSError, AttributeError) as error:  # not a library, or not one of this package's
    raise ImportError(
        f'groundwork_cpu: cannot load {path} ({library.description}): {error}; '
        f'reinstall: {REINSTALL}'
    ) from error
  check_jaxlib(library, built_for, jaxlib.__version__)
  for target, handler in handlers.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform='cpu')
  LOADED[library.name] = (library, handle)
  return handle


def report() -> None:
  """Prints one line per loaded library: what it is, where, and what it was built with."""
  for name in sorted(LOADED):
    library, handle = LOADED[name]
    built_with = _string(handle, 'groundwork_cpu_built_with')
    print(f'{library.description}: {library.path} ({built_with})')
