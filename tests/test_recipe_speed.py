"""benchmarks/recipe_speed.py: its figures from a run's timed output, worked by hand, and a
smoke run end to end (tiny data in the published formats, launch/train.py in bfloat16, the
report, the step's share of the matmul peak)."""

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import recipe_speed  # noqa: E402  pylint: disable=wrong-import-position

COMPILED = 'W1204 dispatch.py:204] Finished XLA compilation of jit(train_step) in {} sec'


def test_two_stage_run_by_hand():
  lines = [
      (1.0, '[recipe_speed] data_read_s=0.500'),
      (2.0, COMPILED.format(3.0)),  # Before the first training line: compiled once, not scaled.
      (5.0, '[mt] step 100/200 class_loss=1 loss=1 lr=0.1'),
      (6.0, '[mt] step 200/200 loss=0.9 lr=0.1 steps_per_sec=100'),
      (7.0, '[mt] step 200/200 test_error=0.5 steps_per_sec=20'),  # An evaluation: no rate.
      (8.0, COMPILED.format(1.5)),  # The second stage's step.
      (10.0, '[mt_dlp] step 100/200 loss=0.8 lr=0.1 steps_per_sec=50'),
      (11.0, '[mt_dlp] step 200/200 loss=0.7 lr=0.1 steps_per_sec=100'),
      (13.0, "Test error: {'error': 0.5}"),
      (14.0, ''),
  ]
  run = recipe_speed.parse_run(lines)
  assert run['total_s'] == 14.0 and run['compile_s'] == 4.5 and run['data_read_s'] == 0.5
  assert run['steps_per_s'] == 100.0  # The median of 100, 50, 100.
  assert run['stage_steps'] == {'mt': 200, 'mt_dlp': 200}
  assert (run['loop_s'], run['loop_steps'], run['loop_once_s']) == (6.0, 300, 1.5)
  assert run['eval_s'] == 3.0
  # 1 of 10 epochs per stage: 3,600 more steps at 100/s; the loop's other work, 6 - 3 - 1.5
  # = 1.5 s over 2 stage-epochs, for 18 more.
  recipe = recipe_speed.RECIPES['cifar10_mt_dlp']
  projected = recipe_speed.projection(recipe, run, run_epochs=1, full_epochs=10, every=11)
  assert math.isclose(projected, 14.0 + 36.0 + 0.75 * 18)


def test_validations_and_episodes_by_hand():
  lines = [
      (4.0, '[train] step 20/40 loss=3 lr=0.1'),
      (6.0, '[train] step 40/40 loss=2 lr=0.1 steps_per_sec=10'),
      (9.0, '[val] step 40/40 5way_1shot_accuracy=0.4'),  # 3 s after the last training line.
      (10.0, 'Evaluating 10000 episodes per setting on the 20 miniImageNet test classes...'),
      (30.0, ''),
  ]
  run = recipe_speed.parse_run(lines)
  assert (run['validations'], run['validation_s'], run['eval_s']) == (1, 3.0, 20.0)
  # 2 of 10 epochs of 20 steps: 160 more steps at 10/s; validated every 5 epochs (and at the
  # last), so 2 in the full recipe against this run's 1 (its last epoch), 3 s each; the loop
  # held its 20 steps in 2 s, nothing else.
  recipe = recipe_speed.RECIPES['mini_dc']
  projected = recipe_speed.projection(recipe, run, run_epochs=2, full_epochs=10, every=5)
  assert math.isclose(projected, 30.0 + 16.0 + 3.0)

  lines = [
      (3.0, '  DC+IMP 5way_5shot: episodes 64/640, 1.50 episodes/s, ETA 6.4 min'),
      (13.0, '  DC+IMP 5way_5shot: episodes 640/640, 14.00 episodes/s, ETA 0.0 min'),
      (15.0, ''),
  ]
  run = recipe_speed.parse_run(lines)
  assert math.isclose(run['episodes_per_s'], 57.6)  # (640 - 64) / 10 s, after the first batch.
  projected = recipe_speed.projection(recipe_speed.RECIPES['mini_imp'], run, 0, 0, 1)
  assert math.isclose(projected, 15.0 + (10_000 - 640) / 57.6)


def smoke_report(out_dir, *flags: str) -> dict:
  """recipe_speed.json of `recipe_speed.py --smoke --dtypes=bfloat16 *flags` into out_dir."""
  cmd = [sys.executable, str(ROOT / 'benchmarks' / 'recipe_speed.py'), '--smoke']
  cmd += ['--dtypes=bfloat16', *flags, f'--out={out_dir}']
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return json.loads((out_dir / 'recipe_speed.json').read_text())


def test_smoke_run_end_to_end(tmp_path):
  report = smoke_report(tmp_path, '--recipes=mini_dc')
  names = sorted(os.listdir(tmp_path / 'data' / 'miniimagenet'))
  assert [n for n in names if n.endswith('.pkl')] == [
      f'mini-imagenet-cache-{split}.pkl' for split in ('test', 'train', 'val')
  ]
  (dc,) = report['runs']
  assert 'error' not in dc, dc.get('error')
  assert dc['recipe'] == 'mini_dc' and dc['run_epochs'] == 1 and dc['full_epochs'] == 60
  assert dc['precision'] == {'dtype': 'bfloat16', 'matmul_precision': 'highest'}
  assert dc['data_read_s'] > 0 and dc['compile_s'] > 0 and dc['validations'] == 1
  assert dc['steps_per_s'] > 0 and dc['images_per_s'] == 16 * dc['steps_per_s']  # Smoke batch.
  assert 0 < dc['eval_s'] < dc['total_s'] < dc['projected_s']
  assert 0 < report['step']['share_of_peak'] and report['step']['peak_bf16_tflops'] > 0
  table = (tmp_path / 'recipe_speed.md').read_text()
  assert '| mini_dc | bfloat16 |' in table and 'ResNet-12 train step' in table


def test_budget_spent_reports_the_runs_left_out(tmp_path):
  report = smoke_report(tmp_path, '--recipes=mini_dc,cifar10_mt_dlp', '--skip-step', '--budget-s=1')
  assert [(r['recipe'], r['error']) for r in report['runs']] == [
      ('mini_dc', 'not run: --budget-s spent'),
      ('cifar10_mt_dlp', 'not run: --budget-s spent'),
  ]
  assert (
      '| mini_dc | bfloat16 | failed: not run: --budget-s spent |'
      in (tmp_path / 'recipe_speed.md').read_text()
  )
