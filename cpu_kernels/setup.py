"""Builds groundwork-cpu's C++ libraries at install time; the metadata is in pyproject.toml.

    pip install --no-build-isolation ./cpu_kernels      (or -e for an editable install)

Each library is compiled with g++ (or $CXX) against the XLA FFI headers of the jaxlib
installed in this environment and the oneDNN of `onednn-devel-cpu-gomp` in this Python's
prefix (or $ONEDNN_ROOT), with warnings on. `--no-build-isolation` matters: an isolated build
would compile against another jaxlib than the one that runs the handlers, and link to a
oneDNN that pip deletes after the build. Anything missing (not x86-64 Linux, no jax, no
oneDNN, no compiler) or any compiler error fails the install with the reason; nothing is
compiled later, at import.

The libraries are plain shared objects that groundwork_cpu/_native.py loads with ctypes, not
Python extension modules: setuptools' Extension only drives the compiler here.
"""

import json
import os
import platform
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError, SetupError

CSRC = 'groundwork_cpu/csrc'
HEADERS = [f'{CSRC}/build_info.h', f'{CSRC}/onednn_common.h']
# Library (groundwork_cpu/lib/<name>.so) -> (source, whether it links oneDNN).
LIBRARIES = {
    'onednn_conv': ('onednn_conv.cc', True),
    'onednn_layers': ('onednn_layers.cc', True),
    'knn': ('knn.cc', True),
    'row_graph': ('row_graph.cc', False),
}
COMPILE_ARGS = ['-O3', '-std=c++17', '-fPIC', '-fopenmp', '-Wall', '-Wextra']
INSTALL = 'pip install --no-build-isolation ./cpu_kernels'


def _fail(error_type, message: str):
  raise error_type(f'groundwork-cpu: {message}')


def _check_platform() -> None:
  # The kernels use x86 intrinsics (AVX-512/AVX2, picked at run time) and oneDNN's x86 wheel.
  if sys.platform != 'linux' or platform.machine() != 'x86_64':
    _fail(
        PlatformError,
        f'builds on x86-64 Linux only, not {sys.platform}/{platform.machine()}; '
        'on other machines use the project without it (the plain JAX paths).',
    )


def _compiler() -> list[str]:
  """The C++ compiler command: $CXX, else g++, else c++."""
  command = shlex.split(os.environ.get('CXX', '')) or [
      shutil.which('g++') or shutil.which('c++') or 'g++'
  ]
  if shutil.which(command[0]) is None:
    _fail(
        PlatformError,
        f'no C++ compiler: {command[0]!r} is not an executable '
        f'(CXX={os.environ.get("CXX", "<unset>")!r}); install g++ (apt-get install g++) or set '
        'CXX to a C++17 compiler.',
    )
  return command


def _jaxlib() -> tuple[str, str]:
  """(version, FFI include directory) of the jaxlib in this environment."""
  try:
    import jax  # pylint: disable=import-outside-toplevel
    import jaxlib  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    _fail(
        SetupError,
        f'needs jax and jaxlib installed first, since it compiles against their '
        f'XLA FFI headers ({error}). Install jax, then `{INSTALL}` (no build isolation, so '
        'that the build sees this environment).',
    )
  return jaxlib.__version__, jax.ffi.include_dir()


def _onednn() -> tuple[Path, Path]:
  """(include dir, lib dir) of oneDNN: $ONEDNN_ROOT, else this Python's prefix."""
  roots = [Path(os.environ['ONEDNN_ROOT'])] if os.environ.get('ONEDNN_ROOT') else []
  roots += [Path(sys.prefix), Path(sysconfig.get_config_var('prefix') or sys.prefix)]
  for root in roots:
    include, lib = root / 'include', root / 'lib'
    if (include / 'oneapi' / 'dnnl' / 'dnnl.hpp').exists() and any(lib.glob('libdnnl.so*')):
      return include, lib
  _fail(
      SetupError,
      f'oneDNN headers/library not found under {", ".join(map(str, roots))} '
      '(looked for include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so): '
      '`pip install onednn-devel-cpu-gomp==2023.2.0`, or set ONEDNN_ROOT to a oneDNN 3.x '
      'install.',
  )


def _c_string(text: str) -> str:
  return json.dumps(text)  # a valid C string literal for the ASCII this holds


class BuildLibraries(build_ext):
  """build_ext with the compiler, flags and dependencies of the package's libraries."""

  def finalize_options(self):
    super().finalize_options()
    # Always rebuild: a build left from another jaxlib or oneDNN would look up to date.
    self.force = True
    if self.parallel is None:
      self.parallel = min(4, os.cpu_count() or 1)

  def get_ext_filename(self, fullname):
    # Plain shared libraries loaded with ctypes, not Python modules: no ABI tag in the name.
    return os.path.join(*fullname.split('.')) + '.so'

  def copy_extensions_to_source(self):
    # An editable install builds in place; lib/ is no Python package, so nothing else makes it.
    for ext in self.extensions:
      os.makedirs(os.path.dirname(self.get_ext_fullpath(ext.name)), exist_ok=True)
    super().copy_extensions_to_source()

  def build_extensions(self):
    _check_platform()
    compiler = _compiler()
    jaxlib_version, ffi_include = _jaxlib()
    onednn_include, onednn_lib = _onednn()
    flags = shlex.split(os.environ.get('CXXFLAGS', ''))
    link_flags = shlex.split(os.environ.get('LDFLAGS', ''))
    # Python's own CFLAGS (C-only warnings, -g) do not belong to these libraries: the
    # commands are set here in full.
    executables = {
        'compiler': compiler,
        'compiler_so': compiler,
        'compiler_cxx': compiler,
        'linker_so': [*compiler, '-shared'],
        'linker_exe': compiler,
    }
    for name in ('compiler_so_cxx', 'linker_so_cxx'):  # newer setuptools compile C++ with these
      if name in self.compiler.executables:
        executables[name] = executables[name.removesuffix('_cxx')]
    self.compiler.set_executables(**executables)
    for ext in self.extensions:
      uses_onednn = LIBRARIES[ext.name.rsplit('.', 1)[1]][1]
      built_with = f'jaxlib {jaxlib_version}' + (f', oneDNN in {onednn_lib}' if uses_onednn else '')
      ext.define_macros += [
          ('GROUNDWORK_CPU_JAXLIB', _c_string(jaxlib_version)),
          ('GROUNDWORK_CPU_COMPILER', _c_string(Path(compiler[0]).name)),
          ('GROUNDWORK_CPU_BUILT_WITH', _c_string(built_with)),
      ]
      # -isystem: the third-party headers' own -Wextra warnings (unused parameters, sign
      # comparisons in XLA's FFI headers) are theirs to fix, not ours.
      ext.extra_compile_args = [
          *COMPILE_ARGS,
          '-isystem',
          ffi_include,
          '-isystem',
          str(onednn_include),
          *flags,
      ]
      ext.extra_link_args = ['-fopenmp', *link_flags]
      if uses_onednn:
        ext.extra_link_args += [f'-L{onednn_lib}', '-ldnnl', f'-Wl,-rpath,{onednn_lib}']
    print(
        f'groundwork-cpu: building with {shlex.join(compiler)} against jaxlib '
        f'{jaxlib_version} ({ffi_include}) and oneDNN ({onednn_lib})'
    )
    super().build_extensions()


setup(
    ext_modules=[
        Extension(
            f'groundwork_cpu.lib.{name}',
            sources=[f'{CSRC}/{source}'],
            depends=HEADERS,
            language='c++',
        )
        for name, (source, _) in LIBRARIES.items()
    ],
    cmdclass={'build_ext': BuildLibraries},
)
