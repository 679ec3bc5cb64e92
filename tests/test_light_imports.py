"""What loads when: no TensorFlow in the core; configs and the command line load no JAX.

Each check runs in a fresh interpreter, since this one has long imported everything.
"""

import ast
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {'groundwork': ROOT / 'groundwork', 'fsl': ROOT / 'fsl', 'semisup': ROOT / 'ssl'}
CONFIGS = sorted((ROOT / 'configs').rglob('*.py'))
TENSORFLOW = ('tensorflow', 'tensorflow_datasets', 'keras', 'clu')
# What a config or the command line may not load: seconds of imports before any answer.
HEAVY = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', *TENSORFLOW)
TYPO = ['--config=configs/fsl/dense_classification.py:smoke', '--config.bogus=1']
# The commands answer in ~0.2 s on an idle 2-core machine; the bound leaves room for a
# loaded one and still fails if JAX (seconds) or TensorFlow (~5 s) comes back.
ANSWER_SECONDS = 5.0


def _loaded_after(code: str, unwanted: tuple[str, ...], *args: str) -> list[str]:
  """Which of the `unwanted` top-level packages a fresh interpreter has loaded after `code`."""
  code += textwrap.dedent(f"""
      import sys
      print(sorted({{name.split('.')[0] for name in sys.modules}} & set({unwanted!r})))
  """)
  out = subprocess.run(
      [sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr
  return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def _all_modules() -> list[str]:
  names = []
  for package, folder in PACKAGES.items():
    for path in sorted(folder.rglob('*.py')):
      parts = path.relative_to(folder).with_suffix('').parts
      names.append('.'.join((package, *(parts[:-1] if parts[-1] == '__init__' else parts))))
  return names


def test_no_module_and_no_metric_writer_loads_tensorflow(tmp_path):
  # Writing, not just importing: tensorboard's own EventFileWriter imports TensorFlow when
  # it opens a file.
  code = textwrap.dedent(f"""
      import importlib, sys
      for name in {_all_modules()!r}:
        importlib.import_module(name)
      sys.path.insert(0, {str(ROOT / 'launch')!r})
      import trainers
      from groundwork.training import MetricLogger
      MetricLogger({str(tmp_path)!r}, 1).log(1, {{'loss': 1.0}})
  """)
  assert _loaded_after(code, TENSORFLOW) == []


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_load_without_heavy_imports(path):
  code = textwrap.dedent(f"""
      import importlib.util, sys
      spec = importlib.util.spec_from_file_location('config', {str(path)!r})
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      module.get_config(None), module.get_config('smoke')
  """)
  assert _loaded_after(code, HEAVY) == []


@pytest.mark.parametrize('args', [['--helpshort'], TYPO], ids=['helpshort', 'typo'])
def test_command_line_answers_before_jax_loads(args):
  code = textwrap.dedent(f"""
      import runpy, sys
      sys.path.insert(0, {str(ROOT / 'launch')!r})
      sys.argv = ['launch/train.py', *sys.argv[1:]]
      try:
        runpy.run_path('launch/train.py', run_name='__main__')
      except SystemExit:
        pass
  """)
  assert _loaded_after(code, HEAVY, *args) == []


@pytest.mark.parametrize('args', [['--helpshort'], TYPO], ids=['helpshort', 'typo'])
def test_command_line_answers_quickly(args):
  command = [sys.executable, 'launch/train.py', *args]
  subprocess.run(command, cwd=ROOT, capture_output=True, timeout=300)  # Warms the caches.
  start = time.perf_counter()
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  seconds = time.perf_counter() - start
  assert seconds < ANSWER_SECONDS, f'{" ".join(args)} took {seconds:.1f} s'
  assert out.returncode == 1  # absl's code for help and for a flag error alike.
  if args == TYPO:
    assert "flag --config.bogus: the config has no field 'bogus'" in out.stderr
    assert 'Traceback' not in out.stderr
  else:
    assert '--config.field' in out.stdout


def test_typo_in_a_nested_field_suggests_the_field():
  command = [sys.executable, 'launch/train.py', TYPO[0], '--config.optim.lrr=1']
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "--config.optim.lrr: config.optim has no field 'lrr'; did you mean lr?" in out.stderr
