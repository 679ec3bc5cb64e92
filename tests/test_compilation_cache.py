"""The persistent compilation cache: a second process reads back what the first compiled."""

import json
import os
import subprocess
import sys

import pytest

from groundwork.training import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process: turn the cache on, compile a small program, print its result and how many
# programs came from the cache.
_PROGRAM = """
import json, sys
from groundwork.training import compilation_cache
compilation_cache.enable(sys.argv[1])
import jax, jax.numpy as jnp
from jax import monitoring
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
hits = []
monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == '/jax/compilation_cache/cache_hits' else None)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=1))
x = jnp.arange(48.0).reshape(6, 8) / 10
print(json.dumps({'value': [float(v) for v in f(x)], 'hits': len(hits)}))
"""


def _run(directory: str) -> dict:
  out = subprocess.run(
      [sys.executable, '-c', _PROGRAM, directory],
      cwd=ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT},
      capture_output=True,
      text=True,
      check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_reads_the_program_back(tmp_path):
  cache = str(tmp_path / 'xla')
  first, second = _run(cache), _run(cache)
  assert first['hits'] == 0
  assert second['hits'] >= 1  # The jitted program and the eager ops that built x.
  assert os.listdir(cache)
  assert second['value'] == first['value']


def test_empty_directory_turns_it_off():
  assert compilation_cache.enable('') is None
  assert compilation_cache.enable(None) is None


def test_unwritable_directory_warns_and_compiles_without(tmp_path, capsys):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  assert compilation_cache.enable(str(blocker / 'xla')) is None
  err = capsys.readouterr().err
  assert 'not writable' in err and '--compilation_cache=' in err


def test_default_directory_follows_xdg_and_names_the_processor(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  directory = compilation_cache.default_directory()
  assert directory.startswith(str(tmp_path / 'dense_lp' / 'xla'))
  assert directory == compilation_cache.default_directory()
  monkeypatch.setattr(compilation_cache, '_host_processor', lambda: 'another cpu')
  assert compilation_cache.default_directory() != directory


@pytest.mark.parametrize('script', ['train.py', 'evaluate.py'])
def test_launch_scripts_take_the_flag(script):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', script), '--helpfull'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert '--compilation_cache' in out.stdout
