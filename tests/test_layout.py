"""Layout rules: import boundaries, the ssl guard, every module imports, every config loads."""

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {'groundwork': ROOT / 'groundwork', 'fsl': ROOT / 'fsl', 'semisup': ROOT / 'ssl'}
# Which top-level packages each package may import from this repository.
ALLOWED = {
    'groundwork': {'groundwork'},
    'fsl': {'fsl', 'groundwork'},
    'semisup': {'semisup', 'groundwork'},
}
OURS = {'groundwork', 'fsl', 'semisup'}


def _imported_roots(path: pathlib.Path) -> set[str]:
  roots = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      roots |= {alias.name.split('.')[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      roots.add(node.module.split('.')[0])
  return roots


def _modules(package: str):
  folder = PACKAGES[package]
  for path in sorted(folder.rglob('*.py')):
    parts = path.relative_to(folder).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    yield path, '.'.join((package, *parts))


@pytest.mark.parametrize('package', sorted(PACKAGES))
def test_import_boundaries(package):
  for path, _ in _modules(package):
    used = _imported_roots(path) & OURS
    assert used <= ALLOWED[package], f'{path} imports {used - ALLOWED[package]}'
    # The semi-supervised folder is called ssl on disk: importing it by that name
    # would be the standard library's module.
    assert 'ssl' not in _imported_roots(path) or package == 'groundwork', path


def test_ssl_folder_has_no_init():
  assert not (ROOT / 'ssl' / '__init__.py').exists()


def test_stdlib_ssl_wins_with_repo_root_on_path():
  code = (
      'import sys; sys.path.insert(0, %r); import ssl, asyncio; '
      'ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); '
      'assert not ssl.__file__.startswith(%r), ssl.__file__; '
      'import semisup.label_propagation; print(type(ctx).__name__)' % (str(ROOT), str(ROOT))
  )
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'SSLContext'


def test_python_dash_m_from_root_keeps_stdlib_ssl():
  out = subprocess.run(
      [sys.executable, '-m', 'launch_probe'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=str(ROOT / 'tests')),
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'SSLContext semisup'


@pytest.mark.parametrize('package', sorted(PACKAGES))
def test_every_module_imports(package):
  for _, name in _modules(package):
    importlib.import_module(name)


CONFIGS = sorted((ROOT / 'configs').rglob('*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_with_and_without_smoke(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.__doc__ and 'launch/train.py' in module.__doc__, 'docstring needs the command'
  for arg in (None, 'smoke'):
    config = module.get_config(arg)
    assert config.trainer in ('fsl', 'ssl', 'fsl_implanting')
    assert isinstance(config.seed, int)
