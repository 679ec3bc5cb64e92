"""The package: built libraries load at import, without a compiler; failures name the fix."""

import os
import subprocess
import sys

import pytest

import groundwork_cpu
from groundwork_cpu import _native, conv


def test_report_lists_every_built_library(capsys):
  groundwork_cpu.report()
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 4
  for name in ('onednn_conv', 'onednn_layers', 'knn', 'row_graph'):
    path = _native.LIB_DIR / f'{name}.so'
    assert path.exists()
    assert sum(str(path) in line for line in lines) == 1


def test_import_runs_no_compiler_and_leaves_the_environment_alone():
  # No compiler on PATH and a CXX that does not exist: the import only loads what was built.
  # OMP_WAIT_POLICY is set for libgomp while the libraries load, then unset again.
  env = {**os.environ, 'PATH': '', 'CXX': '/nonexistent', 'JAX_PLATFORMS': 'cpu'}
  env.pop('OMP_WAIT_POLICY', None)
  code = (
      'import os, groundwork_cpu; groundwork_cpu.report(); '
      'print("policy", os.environ.get("OMP_WAIT_POLICY"))'
  )
  done = subprocess.run(
      [sys.executable, '-c', code], env=env, capture_output=True, text=True, check=False
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[-1] == 'policy None'


def test_a_missing_library_is_an_import_error_naming_file_and_fix(monkeypatch, tmp_path):
  monkeypatch.setattr(_native, 'LIB_DIR', tmp_path)
  with pytest.raises(ImportError) as error:
    _native.load(conv.LIBRARY)
  message = str(error.value)
  assert str(tmp_path / 'onednn_conv.so') in message
  assert 'pip install --no-build-isolation ./cpu_kernels' in message
  # Not a ModuleNotFoundError: an installed package that cannot load must not pass for an
  # absent one (groundwork/backend.py falls back only on the latter).
  assert not isinstance(error.value, ModuleNotFoundError)


def test_an_unloadable_library_is_an_import_error(monkeypatch, tmp_path):
  monkeypatch.setattr(_native, 'LIB_DIR', tmp_path)
  (tmp_path / 'onednn_conv.so').write_bytes(b'not a shared library')
  with pytest.raises(ImportError, match='cannot load .*onednn_conv.so'):
    _native.load(conv.LIBRARY)


def test_a_library_built_for_another_jaxlib_is_refused():
  with pytest.raises(ImportError, match='built against jaxlib 0.0.1.*rebuild'):
    _native.check_jaxlib(conv.LIBRARY, '0.0.1', '0.10.2')
  _native.check_jaxlib(conv.LIBRARY, '0.10.2', '0.10.2')
  # A library called through ctypes alone registers no FFI handlers: any jaxlib will do.
  _native.check_jaxlib(_native.Library('knn', 'kNN'), '0.0.1', '0.10.2')
