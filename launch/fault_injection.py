"""Fault injection: kills, signals and bad input against the real trainers.

  python launch/fault_injection.py --workdir=/tmp/faults [--cases=sigkill_fsl,...]

Each case runs `launch/train.py` on a smoke config in a subprocess, injures it
(SIGKILL after a given logged step, SIGTERM, a truncated checkpoint, a NaN loss,
a bad config value), restarts it with the same command where that applies, and
compares with an uninterrupted reference run. Prints a table:
case, expected, observed, ok.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/fault_injection', 'Scratch directory.')
_CASES = flags.DEFINE_list('cases', None, 'Cases to run (default: all).')
_OMNIGLOT = flags.DEFINE_string(
    'omniglot_dir', str(ROOT.parent / 'shared/data/omniglot'), 'Omniglot zips.'
)
_FASHION = flags.DEFINE_string(
    'fashion_mnist_dir', '/usr/share/datasets/fashion-mnist', 'Fashion-MNIST IDX files.'
)

FSL = 'configs/fsl/dense_classification.py:smoke'
SSL = 'configs/ssl/semi_supervised.py:smoke,method=mt_dlp'


def command(config: str, workdir: str, *overrides: str) -> list[str]:
  data_dir = _OMNIGLOT.value if config.startswith('configs/fsl') else _FASHION.value
  return [
      sys.executable,
      str(ROOT / 'launch/train.py'),
      f'--config={config}',
      f'--workdir={workdir}',
      f'--config.data_dir={data_dir}',
      *overrides,
  ]


def run(cmd, kill_after_line: str | None = None, sig=signal.SIGKILL) -> tuple[int, str]:
  """Runs `cmd`; when a stdout line contains `kill_after_line`, sends `sig`."""
  proc = subprocess.Popen(
      cmd,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=dict(os.environ, PYTHONUNBUFFERED='1'),
  )
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if kill_after_line and kill_after_line in line:
      proc.send_signal(sig)
      kill_after_line = None
  return proc.wait(), ''.join(lines)


def results(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'results.json')
  return json.load(open(path)) if os.path.exists(path) else None


def fresh(name: str) -> str:
  path = os.path.join(_WORKDIR.value, name)
  shutil.rmtree(path, ignore_errors=True)
  return path


def case_kill_and_resume(config: str, name: str, kill_line: str, sig=signal.SIGKILL):
  reference = fresh(f'{name}_reference')
  run(command(config, reference))
  workdir = fresh(name)
  code, _ = run(command(config, workdir), kill_after_line=kill_line, sig=sig)
  resumed_code, out = run(command(config, workdir))
  same = results(workdir) == results(reference) and results(reference) is not None
  observed = (
      f'killed (exit {code}), resumed (exit {resumed_code}), results '
      f'{"identical" if same else "DIFFER"}'
  )
  return 'resumed run gives identical results.json', observed, same and resumed_code == 0


def case_sigterm(config: str, name: str, line: str):
  workdir = fresh(name)
  code, out = run(command(config, workdir), kill_after_line=line, sig=signal.SIGTERM)
  said = 'Resume by running the same command again' in out
  checkpoints = os.listdir(os.path.join(workdir, 'checkpoints'))
  observed = f'exit {code}, message {"shown" if said else "MISSING"}, checkpoints {checkpoints}'
  return 'checkpoint written, exit 143 with a resume message', observed, code == 143 and said


def case_truncated_checkpoint(config: str, name: str):
  workdir = fresh(name)
  run(command(config, workdir))
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  for root, _, files in os.walk(os.path.join(ckpt_dir, str(steps[-1]))):
    for f in files:
      open(os.path.join(root, f), 'w').close()
  os.remove(os.path.join(workdir, 'results.json'))
  code, out = run(command(config, workdir))
  used_previous = f'Resumed from step {steps[-2]}' in out
  observed = f'exit {code}, latest step {steps[-1]} truncated, previous used: {used_previous}'
  return 'corrupt latest reported, previous restored', observed, code == 0 and used_previous


def case_nan_loss(config: str, name: str):
  workdir = fresh(name)
  code, out = run(command(config, workdir, '--config.optim.lr=1e30'))
  named = 'at step' in out and 'NonFiniteLossError' in out
  return 'stops naming the step', f'exit {code}, step named: {named}', code != 0 and named


def case_bad_value(config: str, name: str, override: str, field: str):
  workdir = fresh(name)
  code, out = run(command(config, workdir, override))
  # Before any compile: the error comes before the first training step is logged.
  early = 'step 1/' not in out
  return (
      f'stops before training, naming {field}',
      f'exit {code}, named: {field in out}, before the first step: {early}',
      code != 0 and field in out and early,
  )


def case_missing_data_dir(config: str, name: str):
  workdir, typo = fresh(name), os.path.join(_WORKDIR.value, f'{name}_no_such_data_dir')
  code, out = run(command(config, workdir, f'--config.data_dir={typo}'))
  created = os.path.exists(typo)
  return (
      'stops naming the directory, creates nothing',
      f'exit {code}, named: {typo in out}, created: {created}',
      code != 0 and typo in out and not created,
  )


def case_same_seed(config: str, name: str):
  first, second, other = fresh(f'{name}_a'), fresh(f'{name}_b'), fresh(f'{name}_seed1')
  for workdir in (first, second):
    run(command(config, workdir))
  run(command(config, other, '--config.seed=1'))
  same = results(first) == results(second) and results(first) is not None
  differs = results(other) != results(first)
  return (
      'same seed: identical results.json; seed 1 differs',
      f'identical: {same}, seed 1 differs: {differs}',
      same and differs,
  )


def case_crash_while_writing(config: str, name: str):
  """A process killed inside Orbax's write leaves `<step>.orbax-checkpoint-tmp-*`
  holding partial files; the restart must ignore it and resume from the last
  complete checkpoint."""
  reference = fresh(f'{name}_reference')
  run(command(config, reference))
  workdir = fresh(name)
  run(command(config, workdir), kill_after_line='step 40/', sig=signal.SIGKILL)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  complete = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  partial = os.path.join(ckpt_dir, f'{complete + 30}.orbax-checkpoint-tmp-1')
  os.makedirs(os.path.join(partial, 'default'))
  with open(os.path.join(partial, 'default', 'manifest.ocdbt'), 'wb') as f:
    f.write(b'\x00partial')
  code, out = run(command(config, workdir))
  same = results(workdir) == results(reference) and results(reference) is not None
  resumed = f'Resumed from step {complete}' in out
  return (
      'partial checkpoint ignored, last complete one resumed, identical results',
      f'exit {code}, resumed from {complete}: {resumed}, identical: {same}',
      code == 0 and resumed and same,
  )


CASES = {
    'sigkill_fsl': lambda: case_kill_and_resume(FSL, 'sigkill_fsl', 'step 40/'),
    'sigkill_ssl_mid_epoch': lambda: case_kill_and_resume(SSL, 'sigkill_ssl', '[mt] step 25/'),
    'sigkill_ssl_propagation': lambda: case_kill_and_resume(
        SSL, 'sigkill_ssl_lp', 'pseudo_label_accuracy'
    ),
    'crash_while_writing_checkpoint': lambda: case_crash_while_writing(FSL, 'crash_write'),
    'same_seed_fsl': lambda: case_same_seed(FSL, 'same_seed'),
    'sigterm_fsl': lambda: case_sigterm(FSL, 'sigterm_fsl', 'step 10/'),
    'truncated_checkpoint_fsl': lambda: case_truncated_checkpoint(FSL, 'truncated_fsl'),
    'nan_loss_fsl': lambda: case_nan_loss(FSL, 'nan_fsl'),
    'negative_lr': lambda: case_bad_value(FSL, 'bad_lr', '--config.optim.lr=-1', 'optim.lr'),
    'zero_ways': lambda: case_bad_value(FSL, 'bad_ways', '--config.eval.n_way=0', 'eval.n_way'),
    'unknown_dataset': lambda: case_bad_value(
        FSL, 'bad_ds', '--config.dataset=mnist', 'config.dataset'
    ),
    'k_too_large': lambda: case_bad_value(SSL, 'bad_k', '--config.lp.k=100000', 'lp.k'),
    'negative_lr_ssl': lambda: case_bad_value(
        SSL, 'bad_lr_ssl', '--config.optim.lr=-0.05', 'optim.lr'
    ),
    'alpha_above_one': lambda: case_bad_value(
        SSL, 'bad_alpha', '--config.lp.alpha=1.5', 'lp.alpha'
    ),
    'negative_gamma': lambda: case_bad_value(SSL, 'bad_gamma', '--config.lp.gamma=-3', 'lp.gamma'),
    'missing_data_dir': lambda: case_missing_data_dir(FSL, 'missing_data'),
}


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  for name in _CASES.value or list(CASES):
    expected, observed, ok = CASES[name]()
    rows.append((name, expected, observed, ok))
    print(f'{name}: {"ok" if ok else "FAILED"} ({observed})', flush=True)
  width = max(len(r[0]) for r in rows)
  print(f'\n{"case":<{width}}  {"ok":<4}  expected  |  observed')
  for name, expected, observed, ok in rows:
    print(f'{name:<{width}}  {"yes" if ok else "NO":<4}  {expected}  |  {observed}')
  sys.exit(0 if all(r[3] for r in rows) else 1)


if __name__ == '__main__':
  app.run(main)
