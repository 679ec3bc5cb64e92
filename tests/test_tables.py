"""benchmarks/tables.py prints README's tables from workdirs and names the missing runs."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(root, name, results, provenance=None):
  os.makedirs(os.path.join(root, name))
  with open(os.path.join(root, name, 'results.json'), 'w') as f:
    json.dump(results, f)
  if provenance:
    with open(os.path.join(root, name, 'provenance.json'), 'w') as f:
      json.dump(provenance, f)


def fewshot(one, five, lake):
  return {
      'fewshot': {
          '5way_1shot': {'accuracy': one, 'ci95': 0.0055, 'episodes': 1000},
          '5way_5shot': {'accuracy': five, 'ci95': 0.0027, 'episodes': 1000},
      },
      'lake_oneshot': {'error': lake, 'items': 400},
  }


PROVENANCE = dict(
    commit='abc1234',
    platform='cpu',
    device='cpu',
    devices=1,
    cpu_cores=2,
    machine='x86_64',
    jax='0.10.2',
    flax='0.12.8',
    cpu_kernels=True,
)


def tables(root, table):
  return subprocess.run(
      [sys.executable, 'benchmarks/tables.py', f'--table={table}', f'--root={root}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
  ).stdout


def test_quickstart_rows_range_and_provenance(tmp_path):
  root = str(tmp_path)
  write(root, 'quickstart_seed0_kernels', fewshot(0.8623, 0.9466, 0.315), PROVENANCE)
  write(root, 'quickstart_seed0_core', fewshot(0.8601, 0.9447, 0.3375))
  out = tables(root, 'quickstart')
  assert '| kernels | 0 | 86.23 ± 0.55 | 94.66 ± 0.27 | 31.50% |' in out
  assert '| core | 0 | 86.01 ± 0.55 | 94.47 ± 0.27 | 33.75% |' in out
  assert '| range | | 86.01-86.23 | 94.47-94.66 | 31.50-33.75 |' in out
  assert 'commit abc1234, cpu (cpu, 2 cores), JAX 0.10.2, flax 0.12.8, CPU kernels on' in out


def test_fmnist_table_and_missing_runs(tmp_path):
  root = str(tmp_path)
  write(root, 'fmnist_supervised', {'test': {'error': 0.161}})
  write(root, 'fmnist_mt', {'test': {'error': 0.1538, 'error_teacher': 0.1544}})
  out = tables(root, 'fmnist')
  assert '| supervised | 16.10 |  |  |' in out
  assert '| Mean Teacher | 15.38 | 15.44 |  |' in out
  # The missing runs are named with the commands that train them, stage 2 from stage 1.
  assert 'missing fmnist_dlp:' in out
  assert f'--config.init_workdir={os.path.relpath(root, ROOT)}/fmnist_supervised' in out


def test_fmnist_full_mean_std_and_paired_gain(tmp_path):
  root = str(tmp_path)
  errors = {'supervised': (0.16, 0.15, 0.17), 'mt': (0.14, 0.13, 0.15)}
  for method, by_seed in errors.items():
    for seed, error in enumerate(by_seed):
      write(root, f'fmnist_full_{method}_{seed}', {'test': {'error': error}})
  out = tables(root, 'fmnist_full')
  # Mean ± sample standard deviation over the 3 seeds; the gain is paired by seed (0.02 each).
  assert '| supervised | 16.00 ± 1.00 (16.00, 15.00, 17.00) |' in out
  assert '| Mean Teacher | 14.00 ± 1.00 (14.00, 13.00, 15.00) |  | 2.00 ± 0.00 |' in out


def test_unknown_table_is_refused(tmp_path):
  result = subprocess.run(
      [sys.executable, 'benchmarks/tables.py', '--table=omniglott', f'--root={tmp_path}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
  )
  assert result.returncode != 0
  assert "no table ['omniglott']" in result.stderr


def test_retrieval_rows_and_the_missing_run(tmp_path):
  root = str(tmp_path)
  found = {}
  for ranking, values in (
      ('euclidean', (0.389, 0.4849, 0.7712)),
      ('diffusion', (0.384, 0.475, 0.6981)),
  ):
    for metric, value in zip(('map_at_r', 'r_precision', 'precision_at_1'), values):
      found[f'{ranking}_{metric}'] = value
  write(root, 'omniglot_conv4_dc', {**fewshot(0.9, 0.97, 0.26), 'retrieval': found}, PROVENANCE)
  out = tables(root, 'retrieval')
  assert (
      '| Omniglot novel characters (2,120 images, DC) | 38.90 / 48.49 / 77.12 '
      '| 38.40 / 47.50 / 69.81 |'
  ) in out
  assert 'Fashion-MNIST test set' not in out
  assert 'missing fmnist_dlp: launch/train.py' in out and '--config.init_workdir=' in out
