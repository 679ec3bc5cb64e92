"""Fault injection: kills, signals and bad input against the real trainers.

  python launch/fault_injection.py --workdir=/tmp/faults [--cases=sigkill_fsl,...]

Each case runs `launch/train.py` (or `launch/evaluate.py`) on a smoke config in a
subprocess, injures it (SIGKILL after a given logged step, SIGTERM, a truncated
checkpoint, a NaN loss, a bad config value, a second run on the same workdir, a
changed config, a read-only workdir, a full disk), restarts it with the same command
where that applies, and compares with an uninterrupted reference run. Prints a table:
case, expected, observed, ok. The read-only and full-disk cases mount a read-only bind
and a small tmpfs when run as root (else read-only is a chmod, and full disk is skipped).
"""

import contextlib
import functools
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
IMPLANT = 'configs/fsl/implanting.py:smoke'


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


def evaluate_command(workdir: str, *args: str) -> list[str]:
  return [sys.executable, str(ROOT / 'launch/evaluate.py'), f'--workdir={workdir}', *args]


def start(cmd) -> subprocess.Popen:
  return subprocess.Popen(
      cmd,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=dict(os.environ, PYTHONUNBUFFERED='1'),
  )


def run(cmd, kill_after_line: str | None = None, sig=signal.SIGKILL) -> tuple[int, str]:
  """Runs `cmd`; when a stdout line contains `kill_after_line`, sends `sig`."""
  proc = start(cmd)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if kill_after_line and kill_after_line in line:
      proc.send_signal(sig)
      kill_after_line = None
  return proc.wait(), ''.join(lines)


def run_beside(cmd, other, after_line: str) -> tuple[int, str, int, str]:
  """Starts `cmd`; once it prints `after_line`, runs `other` to its end, then waits for
  `cmd`. Returns (code, output) of `cmd`, then of `other`."""
  proc = start(cmd)
  lines, other_code, other_out = [], None, ''
  for line in proc.stdout:
    lines.append(line)
    if other_code is None and after_line in line:
      other_code, other_out = run(other)
  return proc.wait(), ''.join(lines), other_code, other_out


def one_line_error(out: str) -> bool:
  """The failure is one FATAL line, with no traceback."""
  return 'Traceback' not in out and any(line.startswith('FATAL ') for line in out.splitlines())


@functools.cache
def reference_run(config: str, *overrides: str) -> str:
  """The workdir of an uninterrupted run of `config` (run once per invocation; never
  written to by a case: cases that change a finished workdir copy it)."""
  workdir = fresh(f'reference_{len(_REFERENCES)}')
  _REFERENCES.append(workdir)
  code, out = run(command(config, workdir, *overrides))
  if code != 0:
    raise RuntimeError(f'the reference run of {config} {overrides} failed:\n{out[-3000:]}')
  return workdir


_REFERENCES = []


def copy_of(workdir: str, name: str) -> str:
  target = fresh(name)
  shutil.copytree(workdir, target)
  return target


def results(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'results.json')
  return json.load(open(path)) if os.path.exists(path) else None


def fresh(name: str) -> str:
  path = os.path.join(_WORKDIR.value, name)
  shutil.rmtree(path, ignore_errors=True)
  return path


def case_kill_and_resume(config: str, name: str, kill_line: str, sig=signal.SIGKILL):
  reference = reference_run(config)
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
  reference = reference_run(config)
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


def case_concurrent_runs(config: str, name: str, *overrides: str):
  """A second run (identical, or with `overrides`) starts on a workdir while the first
  trains: it must stop at once naming the other process, and the first must end as an
  uninterrupted run does."""
  workdir = fresh(name)
  code, _, second_code, second_out = run_beside(
      command(config, workdir), command(config, workdir, *overrides), 'step 1/'
  )
  holder = second_out.partition('in use by process ')[2].split(' ')[0]
  named = f'workdir {workdir} is in use by process' in second_out and 'started' in second_out
  same = results(workdir) == results(reference_run(config))
  return (
      'second run stops at once naming the workdir, the other pid, host and start time; '
      'the first ends with the reference results',
      f'second: exit {second_code}, named: {named} (pid {holder}), one line: '
      f'{one_line_error(second_out)}; first: exit {code}, results '
      f'{"identical" if same else "DIFFER"}',
      second_code == 1 and named and one_line_error(second_out) and code == 0 and same,
  )


def case_stale_lock(config: str, name: str):
  workdir = fresh(name)
  run(command(config, workdir), kill_after_line='step 40/')
  dead = json.load(open(os.path.join(workdir, 'run.lock')))['pid']
  code, out = run(command(config, workdir))
  taken = f'Took over the lock of {workdir}/run.lock: process {dead}' in out
  same = results(workdir) == results(reference_run(config))
  return (
      "the killed run's lock is taken over, saying whose; results as uninterrupted",
      f'exit {code}, takeover of pid {dead} reported: {taken}, results '
      f'{"identical" if same else "DIFFER"}',
      code == 0 and taken and same,
  )


def case_changed_config(config: str, name: str):
  """A killed run rerun with another lr, seed and epoch count: refused, listing each
  field; then continued with --allow_config_change, which records the change."""
  workdir = fresh(name)
  run(command(config, workdir), kill_after_line='step 40/')
  before = open(os.path.join(workdir, 'config.json')).read()
  changed = ('--config.optim.lr=0.07', '--config.seed=1', '--config.optim.epochs=3')
  code, out = run(command(config, workdir, *changed))
  listed = all(
      line in out
      for line in (
          'config.optim.lr: 0.05 in the workdir, 0.07 now',
          'config.seed: 0 in the workdir, 1 now',
          'config.optim.epochs: 2 in the workdir, 3 now',
      )
  )
  kept = open(os.path.join(workdir, 'config.json')).read() == before
  allowed_code, _ = run(command(config, workdir, *changed, '--allow_config_change'))
  history = os.path.join(workdir, 'config_changes.json')
  recorded = os.path.exists(history) and set(json.load(open(history))[-1]['changes']) == {
      'optim.lr',
      'seed',
      'optim.epochs',
  }
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  return (
      'refused listing lr, seed and epochs with both values, config.json kept; with '
      '--allow_config_change: continues, records the change, config.json updated',
      f'refused: exit {code}, fields listed: {listed}, config.json kept: {kept}; allowed: exit '
      f'{allowed_code}, recorded: {recorded}, config.json seed {saved["seed"]}',
      code == 1 and listed and kept and allowed_code == 0 and recorded and saved['seed'] == 1,
  )


def case_config_kept_on_failed_start(config: str, name: str):
  """A start that fails on the checkpoint of another model leaves config.json as it was."""
  workdir = copy_of(reference_run(config), name)
  before = open(os.path.join(workdir, 'config.json')).read()
  code, out = run(
      command(config, workdir, '--config.encoder_kwargs.width=16', '--allow_config_change')
  )
  kept = open(os.path.join(workdir, 'config.json')).read() == before
  history = os.path.exists(os.path.join(workdir, 'config_changes.json'))
  named = 'was written by another model' in out
  return (
      'stops naming the checkpoint mismatch; config.json untouched, no change recorded',
      f'exit {code}, mismatch named: {named}, one line: {one_line_error(out)}, config.json '
      f'untouched: {kept}, change recorded: {history}',
      code == 1 and named and one_line_error(out) and kept and not history,
  )


def case_evaluate_unfinished(config: str, name: str):
  workdir = fresh(name)
  run(command(config, workdir), kill_after_line='step 40/')
  code, out = run(evaluate_command(workdir))
  said = 'holds no finished run' in out
  written = results(workdir) is not None
  return (
      'refused, saying the run is unfinished and how to finish it; no results.json',
      f'exit {code}, unfinished named: {said}, one line: {one_line_error(out)}, '
      f'results.json written: {written}',
      code == 1 and said and one_line_error(out) and not written,
  )


def case_evaluate_other_method(config: str, name: str):
  workdir = copy_of(reference_run(config), name)
  before = open(os.path.join(workdir, 'results.json')).read()
  rows = []
  for other, named in (
      ('configs/fsl/dense_classification.py:smoke,head=gap', 'trained by trainer=fsl, head=dc'),
      (SSL, 'the config describes trainer=ssl, method=mt_dlp'),
  ):
    code, out = run(evaluate_command(workdir, f'--config={other}'))
    rows.append((code, named in out, one_line_error(out)))
  kept = open(os.path.join(workdir, 'results.json')).read() == before
  return (
      'a GAP and a semi-supervised config on a DC workdir: refused, naming both methods',
      f'(exit, methods named, one line): {rows}, results.json untouched: {kept}',
      all(r == (1, True, True) for r in rows) and kept,
  )


def case_evaluate_ssl(name: str):
  """The semi-supervised evaluation: a half-trained workdir, a Mean Teacher config on an
  MT+DLP workdir, then its own config into --output (the same numbers as training's)."""
  half = fresh(f'{name}_half')
  run(command(SSL, half), kill_after_line='[mt] step 25/')
  half_code, half_out = run(evaluate_command(half))
  unfinished = 'holds no finished run' in half_out and results(half) is None
  finished = reference_run(SSL)
  mt = 'configs/ssl/semi_supervised.py:smoke,method=mt'
  other_code, other_out = run(evaluate_command(finished, f'--config={mt}'))
  other = 'trained by trainer=ssl, method=mt_dlp; the config describes trainer=ssl, method=mt'
  output = fresh(f'{name}_output')
  own_code, own_out = run(evaluate_command(finished, f'--output={output}'))
  same = results(output) == results(finished)
  return (
      'half-trained: refused, nothing written; Mean Teacher config on MT+DLP: refused naming '
      "both; own config: printed, --output results equal training's",
      f'half: exit {half_code}, refused as unfinished: {unfinished}; other method: exit '
      f'{other_code}, named: {other in other_out}; own: exit {own_code}, printed: '
      f'{"Test error" in own_out}, results {"identical" if same else "DIFFER"}',
      half_code == 1
      and unfinished
      and other_code == 1
      and other in other_out
      and own_code == 0
      and 'Test error' in own_out
      and same,
  )


@contextlib.contextmanager
def read_only(path: str):
  """`path` read-only for the block: a read-only bind mount as root, else a chmod."""
  if os.geteuid() == 0:
    subprocess.run(['mount', '--bind', path, path], check=True)
    try:
      subprocess.run(['mount', '-o', 'remount,bind,ro', path], check=True)
      yield
    finally:
      subprocess.run(['umount', path], check=True)
    return
  modes = {}
  for root, dirs, files in os.walk(path):
    for entry in [root] + [os.path.join(root, f) for f in files]:
      modes[entry] = os.stat(entry).st_mode
      os.chmod(entry, modes[entry] & 0o555)
  try:
    yield
  finally:
    for entry, mode in modes.items():
      os.chmod(entry, mode)


def case_evaluate_read_only(config: str, name: str):
  workdir = copy_of(reference_run(config), name)
  output = fresh(f'{name}_output')
  with read_only(workdir):
    code, out = run(evaluate_command(workdir))
    early = 'Evaluating' not in out and '--output=DIR' in out
    output_code, output_out = run(evaluate_command(workdir, f'--output={output}'))
  table = 'accuracy %' in output_out
  same = results(output) == results(workdir)
  return (
      'without --output: one line naming the path and --output, before any work; with '
      "--output: the table printed, the results written there equal the workdir's",
      f'without: exit {code}, early and naming --output: {early}, one line: '
      f'{one_line_error(out)}; with: exit {output_code}, table: {table}, results '
      f'{"identical" if same else "DIFFER"}',
      code == 1 and early and one_line_error(out) and output_code == 0 and table and same,
  )


def case_read_only_workdir(config: str, name: str):
  workdir = fresh(name)
  os.makedirs(workdir)
  with read_only(workdir):
    code, out = run(command(config, workdir))
  named = f'{workdir} is not writable' in out
  return (
      'one line naming the workdir and what to do, before any data is read',
      f'exit {code}, path named: {named}, one line: {one_line_error(out)}',
      code == 1 and named and one_line_error(out) and 'step 1/' not in out,
  )


def case_full_disk(config: str, name: str):
  """The disk fills up during training (a file fills a small tmpfs after step 40): one line
  naming the path; the last complete checkpoint is intact and, once space is freed, the
  same command resumes from it to the reference results."""
  if os.geteuid() != 0:
    return 'needs root, to mount a small filesystem', 'skipped', None
  mount_point = fresh(name)
  os.makedirs(mount_point)
  subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mount_point], check=True)
  try:
    workdir, filler = os.path.join(mount_point, 'workdir'), os.path.join(mount_point, 'filler')
    proc = start(command(config, workdir))
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if 'step 40/' in line and not os.path.exists(filler):
        with open(filler, 'wb') as f:  # All but 40 KiB, so the next checkpoint cannot fit.
          stat = os.statvfs(mount_point)
          f.write(b'\0' * max(stat.f_bavail * stat.f_frsize - 40 * 1024, 0))
    code, out = proc.wait(), ''.join(lines)
    fatal = [line for line in out.splitlines() if line.startswith('FATAL ')]
    named = bool(fatal) and 'no space left' in fatal[0] and workdir in fatal[0]
    os.remove(filler)
    resumed_code, resumed_out = run(command(config, workdir))
    resumed = 'Resumed from step 34' in resumed_out
    same = results(workdir) == results(reference_run(config))
  finally:
    subprocess.run(['umount', mount_point], check=True)
  return (
      'one line naming the path; after freeing space the same command resumes from the last '
      'complete checkpoint to the reference results',
      f'exit {code}, {len(out.splitlines())} lines, full disk named: {named}, one line: '
      f'{one_line_error(out)}; rerun: exit {resumed_code}, resumed from step 34: {resumed}, '
      f'results {"identical" if same else "DIFFER"}',
      code == 1 and named and one_line_error(out) and resumed_code == 0 and resumed and same,
  )


def case_implant_resume(name: str):
  """Implanting killed after its first batch of episodes continues from the episodes done
  and ends with the results of an uninterrupted run."""
  base = reference_run(FSL)
  reference = reference_run(IMPLANT, f'--config.base_workdir={base}')
  workdir = fresh(name)
  implant = command(IMPLANT, workdir, f'--config.base_workdir={base}')
  code, out = run(implant, kill_after_line='episodes 4/8')
  eta = 'ETA' in out
  resumed_code, resumed_out = run(implant)
  resumed = 'resuming after 4 done' in resumed_out
  same = results(workdir) == results(reference) and results(reference) is not None
  return (
      'progress with an ETA per batch; resumed after the 4 episodes done, identical results',
      f'killed (exit {code}), ETA shown: {eta}; rerun: exit {resumed_code}, resumed after 4: '
      f'{resumed}, results {"identical" if same else "DIFFER"}',
      eta and resumed_code == 0 and resumed and same,
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
    'concurrent_other_seed': lambda: case_concurrent_runs(
        FSL, 'concurrent_seed', '--config.seed=1'
    ),
    'concurrent_identical': lambda: case_concurrent_runs(FSL, 'concurrent_same'),
    'stale_lock': lambda: case_stale_lock(FSL, 'stale_lock'),
    'changed_config_rerun': lambda: case_changed_config(FSL, 'changed_config'),
    'config_kept_on_failed_start': lambda: case_config_kept_on_failed_start(FSL, 'config_kept'),
    'evaluate_unfinished': lambda: case_evaluate_unfinished(FSL, 'eval_unfinished'),
    'evaluate_other_method': lambda: case_evaluate_other_method(FSL, 'eval_other_method'),
    'evaluate_read_only_output': lambda: case_evaluate_read_only(FSL, 'eval_read_only'),
    'evaluate_ssl': lambda: case_evaluate_ssl('eval_ssl'),
    'n_way_too_large': lambda: case_bad_value(
        FSL, 'bad_n_way', '--config.eval.n_way=107', 'config.eval.n_way=107 exceeds the 106'
    ),
    'shots_plus_queries_too_large': lambda: case_bad_value(
        FSL, 'bad_queries', '--config.eval.n_query=16', 'config.eval.n_query=16 need 5 + 16 = 21'
    ),
    'read_only_workdir': lambda: case_read_only_workdir(FSL, 'read_only'),
    'full_disk': lambda: case_full_disk(FSL, 'full_disk'),
    'implant_kill_and_resume': lambda: case_implant_resume('implant_resume'),
}


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  unknown = sorted(set(_CASES.value or []) - set(CASES))
  if unknown:
    raise app.UsageError(f'unknown --cases {unknown}; choose from {list(CASES)}.')
  rows = []
  verdict = {True: 'yes', False: 'NO', None: 'skip'}
  for name in _CASES.value or list(CASES):
    expected, observed, ok = CASES[name]()
    rows.append((name, expected, observed, ok))
    print(f'{name}: {verdict[ok]} (expected: {expected}; observed: {observed})', flush=True)
  width = max(len(r[0]) for r in rows)
  print(f'\n{"case":<{width}}  {"ok":<4}  expected  |  observed')
  for name, expected, observed, ok in rows:
    print(f'{name:<{width}}  {verdict[ok]:<4}  {expected}  |  {observed}')
  # A skipped case (ok None: its setting is missing here) does not fail the run.
  sys.exit(0 if all(r[3] is not False for r in rows) else 1)


if __name__ == '__main__':
  app.run(main)
