r"""Reprints README's result tables from their workdirs, running the runs that are missing.

  python benchmarks/tables.py --table=quickstart --run          # or: make tables TABLE=quickstart
  python benchmarks/tables.py --table=all                        # print what exists, list the rest

Each table is a list of runs: a workdir name under `--root` and the `launch/train.py` command
that trains it (the commands README shows). With `--run` a run whose workdir has no
results.json is trained first, with this interpreter and its install (from the repository root), and the workdir gets a
provenance.json (commit, platform, device, versions, whether the CPU kernels served). Without
`--run` the table is printed from the workdirs that exist and the missing ones are named with
their commands. Every table ends with the provenance of its runs, which README quotes.

Tables: quickstart (seeds x installs: run once with the CPU kernels and once without, e.g.
`make tables TABLE=quickstart` then the same with CPU_KERNELS=no, to see that a result does not
depend on the kernels a machine built), omniglot, omniglot_implanting, omniglot_paired,
fmnist, fmnist_full (the GPU table), digits, retrieval.
"""

from collections.abc import Callable, Sequence
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paired_comparison  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSL = 'configs/fsl/dense_classification.py:dataset=omniglot,encoder=conv4'
SSL = 'configs/ssl/semi_supervised.py'

_TABLE = flags.DEFINE_string('table', 'all', 'A table name, or all.')
_RUN = flags.DEFINE_bool('run', False, 'Train the runs whose workdir has no results.json.')
_ROOT = flags.DEFINE_string('root', 'workdirs/tables', 'Where the workdirs of the tables live.')
_OMNIGLOT = flags.DEFINE_string('omniglot_dir', '../shared/data/omniglot', 'Omniglot zips.')
_FMNIST = flags.DEFINE_string(
    'fashion_mnist_dir', '/usr/share/datasets/fashion-mnist', 'Fashion-MNIST IDX files.'
)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds of the quickstart table.')


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # The workdir under --root.
  config: str
  args: tuple[str, ...] = ()
  init_from: str = ''  # A run whose workdir this one starts from (semi-supervised stage 2).
  base_from: str = ''  # The DC run implanting starts from.

  def command(self, root: str) -> list[str]:
    args = list(self.args)
    if self.init_from:
      args.append(f'--config.init_workdir={os.path.join(root, self.init_from)}')
    if self.base_from:
      args.append(f'--config.base_workdir={os.path.join(root, self.base_from)}')
    return [
        sys.executable,
        'launch/train.py',
        f'--config={self.config}',
        *args,
        f'--workdir={os.path.join(root, self.name)}',
    ]


def install_tag() -> str:
  """'kernels' where the CPU kernels serve this interpreter's runs, else 'core'."""
  from groundwork import backend  # pylint: disable=g-import-not-at-top

  return 'kernels' if backend.cpu_kernels() is not None else 'core'


def provenance() -> dict:
  """What produced a run: the commit (dirty or not), the platform and the versions."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  def git(*args):
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

  dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  device = jax.devices()[0]
  return {
      'commit': git('rev-parse', '--short', 'HEAD') + ('-dirty' if dirty else ''),
      'platform': device.platform,
      'device': device.device_kind,
      'devices': jax.device_count(),
      'cpu_cores': os.cpu_count(),
      'machine': platform.machine(),
      'jax': jax.__version__,
      'flax': flax.__version__,
      'cpu_kernels': install_tag() == 'kernels',
  }


# ------------------------------------------------------------------------------------------------
# The tables: their runs and how each prints.
# ------------------------------------------------------------------------------------------------
def quickstart_runs() -> list[Run]:
  return [
      Run(
          f'quickstart_seed{s}_{install_tag()}',
          f'{FSL},quick',
          (f'--config.data_dir={_OMNIGLOT.value}', f'--config.seed={s}'),
      )
      for s in _SEEDS.value
  ]


def omniglot_runs() -> list[Run]:
  data = f'--config.data_dir={_OMNIGLOT.value}'
  return [
      Run('omniglot_conv4_gap', f'{FSL},head=gap', (data,)),
      Run('omniglot_conv4_dc', f'{FSL},head=dc', (data,)),
      Run('omniglot_conv4_dc_wide', f'{FSL},head=dc', (data, '--config.wide_control.width=16')),
  ]


def implanting_runs() -> list[Run]:
  imp = Run(
      'omniglot_conv4_imp',
      'configs/fsl/implanting.py:dataset=omniglot',
      (f'--config.data_dir={_OMNIGLOT.value}', '--config.eval.batch_episodes=1'),
      base_from='omniglot_conv4_dc',
  )
  return [omniglot_runs()[1], imp]


def fmnist_runs() -> list[Run]:
  spec = f'{SSL}:dataset=fashion_mnist,labels=1000'
  data = f'--config.data_dir={_FMNIST.value}'
  return [
      Run('fmnist_supervised', f'{spec},method=supervised', (data,)),
      Run('fmnist_mt', f'{spec},method=mt', (data,)),
      Run('fmnist_dlp', f'{spec},method=dlp', (data,), init_from='fmnist_supervised'),
      Run('fmnist_mt_dlp', f'{spec},method=mt_dlp', (data,), init_from='fmnist_mt'),
  ]


def fmnist_full_runs() -> list[Run]:
  epochs = ('--config.epochs.mt=8', '--config.epochs.dlp=8', '--config.epochs.mt_dlp=8')
  return [
      Run(
          f'fmnist_full_{method}_{seed}',
          f'{SSL}:dataset=fashion_mnist,labels=1000,method={method}',
          (
              f'--config.data_dir={_FMNIST.value}',
              f'--config.seed={seed}',
              '--config.train_subset=0',
              *epochs,
              '--config.eval_every_epochs=4',
          ),
      )
      for seed in range(3)
      for method in ('supervised', 'mt', 'dlp', 'mt_dlp')
  ]


def digits_runs() -> list[Run]:
  return [
      Run(f'digits_{method}', f'{SSL}:dataset=digits,labels=100,method={method}')
      for method in ('supervised', 'dlp')
  ]


def percent(x: float, ci: float | None = None) -> str:
  return f'{100 * x:.2f}' if ci is None else f'{100 * x:.2f} ± {100 * ci:.2f}'


def fewshot_cells(results: dict) -> list[str]:
  shots = results['fewshot']
  cells = [percent(shots[k]['accuracy'], shots[k]['ci95']) for k in ('5way_1shot', '5way_5shot')]
  lake = results.get('lake_oneshot')
  return cells + [f'{100 * lake["error"]:.2f}%' if lake else '']


def print_quickstart(root: str, _: dict) -> None:
  names = sorted(n for n in os.listdir(root) if n.startswith('quickstart_seed'))
  print(
      '| install | seed | 5-way 1-shot (1,000 episodes) | 5-way 5-shot | Lake error (400 items) |'
  )
  print('|---|---|---|---|---|')
  values = []
  for name in names:
    results = read_results(root, name)
    if results is None:
      continue
    seed, tag = name.removeprefix('quickstart_seed').split('_', 1)
    print(f'| {tag} | {seed} | ' + ' | '.join(fewshot_cells(results)) + ' |')
    shots = results['fewshot']
    values.append(
        [shots['5way_1shot']['accuracy'], shots['5way_5shot']['accuracy']]
        + [results['lake_oneshot']['error']]
    )
  if values:
    low, high = np.min(values, axis=0), np.max(values, axis=0)
    print(
        '| range | | '
        + ' | '.join(f'{100 * a:.2f}-{100 * b:.2f}' for a, b in zip(low, high))
        + ' |'
    )


def print_omniglot(root: str, results: dict) -> None:
  labels = {
      'omniglot_conv4_gap': 'GAP',
      'omniglot_conv4_dc': 'DC',
      'omniglot_conv4_dc_wide': 'DC+WIDE (last block +16 channels, trained from scratch)',
  }
  print('| method | 5-way 1-shot | 5-way 5-shot | Lake 20-way 1-shot error (400 items) |')
  print('|---|---|---|---|')
  for name, label in labels.items():
    if name in results:
      print(f'| {label} | ' + ' | '.join(fewshot_cells(results[name])) + ' |')


def print_implanting(root: str, results: dict) -> None:
  print('| 5-way 5-shot, 10,000 episodes | accuracy | paired gain over DC |')
  print('|---|---|---|')
  dc, imp = results.get('omniglot_conv4_dc'), results.get('omniglot_conv4_imp')
  if dc:
    shot = dc['fewshot']['5way_5shot']
    print(f'| DC | {percent(shot["accuracy"], shot["ci95"])} | |')
  if dc and imp:
    shot = imp['fewshot']['5way_5shot']
    pairs = paired(root, 'omniglot_conv4_imp', 'omniglot_conv4_dc')
    gain = pairs.get('5way_5shot')
    gain_cell = f'{100 * gain[0]:+.2f} ± {100 * gain[1]:.2f}' if gain else ''
    print(f'| DC+IMP | {percent(shot["accuracy"], shot["ci95"])} | {gain_cell} |')


def paired(root: str, a: str, b: str) -> dict:
  return paired_comparison.paired_differences(os.path.join(root, a), os.path.join(root, b))


def print_paired(root: str, results: dict) -> None:
  print('| A − B | 5-way 1-shot | 5-way 5-shot |')
  print('|---|---|---|')
  rows = [
      ('DC − GAP', 'omniglot_conv4_dc', 'omniglot_conv4_gap'),
      ('DC+WIDE − DC', 'omniglot_conv4_dc_wide', 'omniglot_conv4_dc'),
      ('DC+IMP − DC', 'omniglot_conv4_imp', 'omniglot_conv4_dc'),
  ]
  for label, a, b in rows:
    if a in results and b in results:
      pairs = paired(root, a, b)
      cells = [
          f'{100 * pairs[k][0]:+.2f} ± {100 * pairs[k][1]:.2f}' if k in pairs else ''
          for k in ('5way_1shot', '5way_5shot')
      ]
      print(f'| {label} | ' + ' | '.join(cells) + ' |')


def ssl_cells(results: dict) -> list[str]:
  test = results['test']
  teacher = test.get('error_teacher')
  pseudo = results.get('pseudo_label_accuracy')
  return [
      percent(test['error']),
      '' if teacher is None else percent(teacher),
      '' if pseudo is None else percent(pseudo),
  ]


METHODS = {'supervised': 'supervised', 'mt': 'Mean Teacher', 'dlp': 'DLP', 'mt_dlp': 'MT+DLP'}


def print_fmnist(root: str, results: dict) -> None:
  print(
      '| method | test error % (student) | test error % (teacher) '
      '| pseudo-label accuracy on the unlabelled % |'
  )
  print('|---|---|---|---|')
  for method, label in METHODS.items():
    if f'fmnist_{method}' in results:
      print(f'| {label} | ' + ' | '.join(ssl_cells(results[f'fmnist_{method}'])) + ' |')


def print_fmnist_full(root: str, results: dict) -> None:
  print('| method | student | teacher | gain over supervised | pseudo-label accuracy % |')
  print('|---|---|---|---|---|')

  def series(method, read):
    runs = [results.get(f'fmnist_full_{method}_{seed}') for seed in range(3)]
    return None if None in runs else np.array([read(r) for r in runs])

  def mean_std(x):
    return f'{100 * x.mean():.2f} ± {100 * x.std(ddof=1):.2f}'

  supervised = series('supervised', lambda r: r['test']['error'])
  for method, label in METHODS.items():
    student = series(method, lambda r: r['test']['error'])
    if student is None:
      continue
    teacher = series(method, lambda r: r['test'].get('error_teacher', np.nan))
    pseudo = series(method, lambda r: r.get('pseudo_label_accuracy', np.nan))
    each = ', '.join(f'{100 * e:.2f}' for e in student)
    cells = [
        f'{mean_std(student)} ({each})',
        '' if np.isnan(teacher).any() else mean_std(teacher),
        '' if method == 'supervised' or supervised is None else mean_std(supervised - student),
        '' if np.isnan(pseudo).any() else mean_std(pseudo),
    ]
    print(f'| {label} | ' + ' | '.join(cells) + ' |')


def print_digits(root: str, results: dict) -> None:
  supervised, dlp = results.get('digits_supervised'), results.get('digits_dlp')
  out = os.path.join(root, 'digits_label_spreading.json')
  command = [
      sys.executable,
      'benchmarks/digits_label_spreading.py',
      '--labels=100',
      f'--out={out}',
  ]
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  with open(out) as f:
    rows = json.load(f)
  print('| method | test error % | pseudo-label accuracy % |')
  print('|---|---|---|')
  if supervised:
    print(f'| supervised (Conv-4 width 32, 300 epochs) | {ssl_cells(supervised)[0]} | |')
  if dlp:
    print(f'| DLP (Conv-4 width 32, 300 + 30 epochs) | {" | ".join(ssl_cells(dlp)[::2])} |')
  for key, label in (
      ('label_spreading', 'LabelSpreading (kNN k=10, α=0.99, on pixels)'),
      ('label_propagation_pixels', "this project's `label_propagation` on pixels (k=10)"),
  ):
    row = rows[key]
    print(f'| {label} | {percent(row["test_error"])} | {percent(row["transductive_accuracy"])} |')


def retrieval_runs() -> list[Run]:
  fmnist = {run.name: run for run in fmnist_runs()}
  return [omniglot_runs()[1], fmnist['fmnist_supervised'], fmnist['fmnist_dlp']]


def print_retrieval(root: str, results: dict) -> None:
  print("| data | Euclidean | diffusion, the paper's k = 50, k_q = 10, α = 0.99 |")
  print('|---|---|---|')
  for name, label in (
      ('omniglot_conv4_dc', 'Omniglot novel characters (2,120 images, DC)'),
      ('fmnist_dlp', 'Fashion-MNIST test set (10,000, the DLP student)'),
  ):
    if name not in results:
      continue
    found = results[name]['retrieval']
    cells = [
        ' / '.join(
            f'{100 * found[f"{ranking}_{metric}"]:.2f}'
            for metric in ('map_at_r', 'r_precision', 'precision_at_1')
        )
        for ranking in ('euclidean', 'diffusion')
    ]
    print(f'| {label} | ' + ' | '.join(cells) + ' |')
  print(
      '\n(MAP@R / R-Precision / P@1, %; the validation-chosen diffusion column comes from '
      'benchmarks/diffusion_sweep.py, docs/diffusion.md)'
  )


@dataclasses.dataclass(frozen=True)
class Table:
  runs: Callable[[], Sequence[Run]]
  show: Callable[[str, dict], None]
  # The workdirs a table reads beyond its runs' (the quickstart's runs of the other install).
  prefix: str = ''


TABLES = {
    'quickstart': Table(quickstart_runs, print_quickstart, prefix='quickstart_seed'),
    'omniglot': Table(omniglot_runs, print_omniglot),
    'omniglot_implanting': Table(implanting_runs, print_implanting),
    'omniglot_paired': Table(lambda: omniglot_runs() + implanting_runs()[1:], print_paired),
    'fmnist': Table(fmnist_runs, print_fmnist),
    'fmnist_full': Table(fmnist_full_runs, print_fmnist_full),
    'digits': Table(digits_runs, print_digits),
    'retrieval': Table(retrieval_runs, print_retrieval),
}


# ------------------------------------------------------------------------------------------------
# Running and reading.
# ------------------------------------------------------------------------------------------------
def read_results(root: str, name: str) -> dict | None:
  path = os.path.join(root, name, 'results.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run(root: str, spec: Run) -> None:
  command = spec.command(root)
  print('running:', shlex.join(command[1:]), flush=True)
  subprocess.run(command, cwd=ROOT, check=True)
  with open(os.path.join(root, spec.name, 'provenance.json'), 'w') as f:
    json.dump(provenance(), f, indent=2)


def provenance_line(root: str, names: Sequence[str]) -> str:
  seen = []
  for name in names:
    path = os.path.join(root, name, 'provenance.json')
    if os.path.exists(path):
      with open(path) as f:
        p = json.load(f)
      line = (
          f'commit {p["commit"]}, {p["device"]} ({p["platform"]}, {p["cpu_cores"]} cores), '
          f'JAX {p["jax"]}, flax {p["flax"]}, CPU kernels {"on" if p["cpu_kernels"] else "off"}'
      )
      if line not in seen:
        seen.append(line)
  return '; '.join(seen) if seen else 'no provenance.json (not run by this script)'


def show_table(name: str, root: str) -> None:
  table = TABLES[name]
  specs = list(table.runs())
  for spec in specs:
    if _RUN.value and read_results(root, spec.name) is None:
      run(root, spec)
  results = {s.name: r for s in specs if (r := read_results(root, s.name)) is not None}
  print(f'\n## {name}\n')
  table.show(root, results)
  missing = [s for s in specs if s.name not in results]
  for spec in missing:
    print(f'missing {spec.name}: {shlex.join(spec.command(root)[1:])}')
  names = [s.name for s in specs]
  if table.prefix:
    names += sorted(n for n in os.listdir(root) if n.startswith(table.prefix) and n not in names)
  print(f'\nprovenance: {provenance_line(root, names)}')


def main(argv):
  del argv
  names = list(TABLES) if _TABLE.value == 'all' else _TABLE.value.split(',')
  unknown = [n for n in names if n not in TABLES]
  if unknown:
    raise app.UsageError(f'--table={_TABLE.value}: no table {unknown}; choose from {list(TABLES)}.')
  # Commands and workdirs are relative to the repository root, as README shows them.
  root = os.path.relpath(os.path.abspath(_ROOT.value), ROOT)
  os.chdir(ROOT)
  os.makedirs(root, exist_ok=True)
  for name in names:
    show_table(name, root)


if __name__ == '__main__':
  app.run(main)
