r"""The paper recipes timed end to end through launch/train.py, in float32 and bfloat16.

Writes full-size synthetic data in each published format into a scratch directory
(miniImageNet as Ren's cache pickles `mini-imagenet-cache-{train,val,test}.pkl`, 64/16/20
classes x 600 images at 84x84; CIFAR-10 and CIFAR-100 as the python batches, 50,000 training
and 10,000 test images), then runs each recipe as its own `launch/train.py` process with the
real config, a shortened training (`--scale`) and the full evaluation, and reads its output:

- data read s: the trainer's own dataset reads (`fsl.fewshot_data.load`,
  `semisup.datasets.load`), timed inside the run (`--launch` wraps launch/train.py);
- compile s: every compilation's tracing, lowering and XLA time (JAX_LOG_COMPILES);
- steps/s: the median of the trainer's own steps/s lines (episodes/s for implanting, from
  its progress lines), images/s that times the batch;
- eval s: the final evaluation (few-shot episodes; test error);
- total s: the process's wall time; projected: the full recipe's, that is this run plus the
  steps it left out at the measured rate, their epochs' other work (label propagation, test
  evaluations, checkpoints) at this run's cost per epoch, compilations not counted again,
  and the validations left out at this run's cost each; for implanting, the episodes left
  out at the measured episodes/s.

It also times the ResNet-12 train step (84x84, batch 128, bfloat16) and its FLOP rate by the
all-taps count (benchmarks/flops.py) as a share of the bfloat16 matmul peak measured in the
same run (benchmarks/train_speed.py), and prints the issue's targets against the figures.

  python benchmarks/recipe_speed.py --out=/tmp/recipe_speed                # one GPU
  python benchmarks/recipe_speed.py --scale=0.01 --recipes=mini_dc,mini_imp --out=DIR
  python benchmarks/recipe_speed.py --smoke --out=/tmp/recipe_smoke        # CPU, tiny data

Writes DIR/recipe_speed.json and DIR/recipe_speed.md, and each run's log under DIR/logs/.
Data written once are reused by a later run with the same --out (or --data-dir).
"""

import argparse
import dataclasses
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

DTYPES = ("float32", "bfloat16")
# The targets on one H100/H200-class GPU, in seconds (and a share of the peak).
TARGETS = {
    "mini_dc": ("bfloat16", 180.0),
    "cifar10_mt_dlp": (None, 900.0),
    "mini_imp": (None, 120.0),
}
STEP_SHARE_TARGET = 0.40


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A paper recipe: its config, its data, and what --scale shortens."""

  config: str  # file:args, run from the repository root
  data: str  # a key of the writers: miniimagenet, cifar10, cifar100
  epoch_fields: tuple[str, ...] = ()  # Training length per stage, scaled.
  base: str = ""  # implanting: the recipe whose finished workdir it starts from
  episodes_full: int = 0  # implanting: the paper's episode count (per shot setting)
  overrides: tuple[str, ...] = ()  # more --config.field=value flags


RECIPES = {
    # Lifchitz et al. 2019: ResNet-12, dense classification, 60 epochs, 3 x 10,000 episodes.
    "mini_dc": Recipe(
        "configs/fsl/dense_classification.py:dataset=miniimagenet,encoder=resnet12,head=dc",
        "miniimagenet",
        ("optim.epochs",),
    ),
    # DC+IMP on 10,000 5-shot episodes (the target; the paper also runs 10-shot).
    "mini_imp": Recipe(
        "configs/fsl/implanting.py:dataset=miniimagenet",
        "miniimagenet",
        base="mini_dc",
        episodes_full=10_000,
        overrides=("--config.eval.shots=(5,)",),
    ),
    # Iscen et al. 2019: CNN-13, 4,000 labels, Mean Teacher then MT+DLP, 180 epochs each.
    "cifar10_mt_dlp": Recipe(
        "configs/ssl/semi_supervised.py:dataset=cifar10,labels=4000,method=mt_dlp",
        "cifar10",
        ("epochs.mt", "epochs.mt_dlp"),
    ),
    "cifar100_mt_dlp": Recipe(
        "configs/ssl/semi_supervised.py:dataset=cifar100,labels=10000,method=mt_dlp",
        "cifar100",
        ("epochs.mt", "epochs.mt_dlp"),
    ),
}


# ----------------------------------------------------------------------------- data


def _complete(folder: str) -> bool:
  return os.path.exists(os.path.join(folder, "written.json"))


def _mark_complete(folder: str, info: dict) -> None:
  with open(os.path.join(folder, "written.json"), "w", encoding="utf-8") as f:
    json.dump(info, f)


def write_miniimagenet(folder: str, per_class: int, seed: int = 0) -> None:
  """Ren et al.'s cache pickles: {'image_data': uint8 [N,84,84,3], 'class_dict': {wnid: rows}}."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  first = 0
  for split, classes in (("train", 64), ("val", 16), ("test", 20)):
    images = rng.integers(0, 256, (classes * per_class, 84, 84, 3), dtype=np.uint8)
    class_dict = {
        f"n{first + c:08d}": list(range(c * per_class, (c + 1) * per_class)) for c in range(classes)
    }
    path = os.path.join(folder, f"mini-imagenet-cache-{split}.pkl")
    with open(path, "wb") as f:
      pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    first += classes
  _mark_complete(folder, {"per_class": per_class})


def write_cifar10(folder: str, per_batch: int, n_test: int) -> None:
  """cifar-10-batches-py/: five training batches and a test batch (Python 2 pickles)."""
  from tests import fake_data  # pylint: disable=import-outside-toplevel

  shutil.rmtree(os.path.join(folder, "cifar-10-batches-py"), ignore_errors=True)
  fake_data.write_cifar10(_path(folder), per_batch=per_batch, n_test=n_test)
  _mark_complete(folder, {"per_batch": per_batch, "n_test": n_test})


def write_cifar100(folder: str, train_per_class: int, test_per_class: int, seed: int = 0) -> None:
  """cifar-100-python/ with CIFAR-100's own fine and coarse names (Python 2 pickles)."""
  from groundwork.data import CIFAR100_SUPERCLASSES  # pylint: disable=import-outside-toplevel
  from tests import fake_data  # pylint: disable=import-outside-toplevel

  fine = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)
  coarse = sorted(CIFAR100_SUPERCLASSES)
  coarse_of = {f: coarse.index(s) for s, names in CIFAR100_SUPERCLASSES.items() for f in names}
  target = os.path.join(folder, "cifar-100-python")
  os.makedirs(target, exist_ok=True)
  rng = np.random.default_rng(seed)
  for part, per_class in (("train", train_per_class), ("test", test_per_class)):
    labels = list(range(100)) * per_class
    content = {
        "filenames": [f"{i}_{fine[c]}.png" for i, c in enumerate(labels)],
        "batch_label": part,
        "fine_labels": labels,
        "coarse_labels": [coarse_of[fine[c]] for c in labels],
        "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
    }
    with open(os.path.join(target, part), "wb") as f:
      f.write(fake_data.py2_pickle(content))
  with open(os.path.join(target, "meta"), "wb") as f:
    f.write(fake_data.py2_pickle({"fine_label_names": fine, "coarse_label_names": coarse}))
  _mark_complete(folder, {"train_per_class": train_per_class, "test_per_class": test_per_class})


def _path(folder: str):
  import pathlib  # pylint: disable=import-outside-toplevel

  return pathlib.Path(folder)


def write_data(data_dir: str, names: set[str], smoke: bool) -> dict[str, float]:
  """Each dataset in `names` under data_dir/<name>, unless written before; seconds each."""
  sizes = {
      # Smoke: enough images per class for 5-way episodes of 10 shots and 2 queries, and
      # for the semi-supervised smoke's 600-image training subset.
      "miniimagenet": dict(per_class=20 if smoke else 600),
      "cifar10": dict(per_batch=200 if smoke else 10_000, n_test=100 if smoke else 10_000),
      "cifar100": dict(train_per_class=8 if smoke else 500, test_per_class=2 if smoke else 100),
  }
  writers = {
      "miniimagenet": write_miniimagenet,
      "cifar10": write_cifar10,
      "cifar100": write_cifar100,
  }
  seconds = {}
  for name in sorted(names):
    folder = os.path.join(data_dir, name)
    if _complete(folder):
      with open(os.path.join(folder, "written.json"), encoding="utf-8") as f:
        if json.load(f) == sizes[name]:
          continue
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    start = time.perf_counter()
    writers[name](folder, **sizes[name])
    seconds[name] = time.perf_counter() - start
    print(f"wrote {name} to {folder} in {seconds[name]:.0f} s", flush=True)
  return seconds


# ----------------------------------------------------------------------------- runs

_COMPILE = re.compile(
    r"Finished (?:tracing|jaxpr to MLIR module conversion|XLA compilation) .* in ([0-9.e+-]+) sec"
)
_STEP = re.compile(r"^\[(\w+)\] step (\d+)/(\d+) (.*)$")
_RATE = re.compile(r"steps_per_sec=([0-9.e+-]+)")
_EPISODES = re.compile(r"DC\+IMP (\S+): episodes (\d+)/(\d+), ([0-9.e+-]+) episodes/s")
_READ = re.compile(r"^\[recipe_speed\] data_read_s=([0-9.e+-]+)")


def launch(argv: list[str]) -> None:
  """launch/train.py with `argv`, each dataset read timed and printed (`_READ`)."""
  import runpy  # pylint: disable=import-outside-toplevel

  from fsl import fewshot_data  # pylint: disable=import-outside-toplevel
  from semisup import datasets  # pylint: disable=import-outside-toplevel

  def timed(load):
    def wrapped(*args, **kwargs):
      start = time.perf_counter()
      out = load(*args, **kwargs)
      print(f"[recipe_speed] data_read_s={time.perf_counter() - start:.3f}", flush=True)
      return out

    return wrapped

  # The trainers call `module.load(config)`, so the wrapped function is the one they reach.
  fewshot_data.load, datasets.load = timed(fewshot_data.load), timed(datasets.load)
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  sys.argv = [os.path.join(ROOT, "launch", "train.py"), *argv]
  runpy.run_path(sys.argv[0], run_name="__main__")


def run_logged(cmd: list[str], log_path: str, timeout: float, env: dict) -> tuple[list, int]:
  """Runs `cmd` from the repository root; (its output lines with the seconds since start at
  which each arrived, exit code). The log file keeps the lines with their times."""
  start = time.perf_counter()
  lines = []
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(" ".join(cmd) + "\n")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
      for line in proc.stdout:
        now = time.perf_counter() - start
        lines.append((now, line.rstrip("\n")))
        log.write(f"{now:9.2f} {line}")
      code = proc.wait()
    finally:
      killer.cancel()
  lines.append((time.perf_counter() - start, ""))  # The process's end.
  return lines, code


def startup(env: dict) -> tuple[float, dict]:
  """Seconds of the interpreter, the trainers' imports and JAX's backend start without any
  work (best of two), and the device and JAX version they found."""
  code = (
      f"import sys; sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, 'launch')!r}]; "
      "import trainers, fsl.train, fsl.train_implanting, semisup.train, jax, json; "
      "print(json.dumps(dict(device=jax.devices()[0].device_kind, "
      "backend=jax.default_backend(), jax=jax.__version__)))"
  )
  best = float("inf")
  for _ in range(2):
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    best = min(best, time.perf_counter() - start)
  return best, json.loads(out.stdout.strip().splitlines()[-1])


def parse_run(lines: list) -> dict:
  """The phases of one run from its timed output (see the module docstring)."""
  compiles = [(t, float(m.group(1))) for t, text in lines if (m := _COMPILE.search(text))]
  total = lines[-1][0]
  rates, train_lines, validations, totals = [], [], [], {}
  previous = 0.0
  for t, text in lines:
    match = _STEP.match(text)
    if match and match.group(1) == "val":
      validations.append((t, t - previous))  # Since the last training line.
    elif match and "loss=" in match.group(4):
      stage, step, stage_total = match.group(1), int(match.group(2)), int(match.group(3))
      totals[stage] = stage_total
      train_lines.append((t, stage, step))
      rate = _RATE.search(match.group(4))
      if rate:
        rates.append(float(rate.group(1)))
      previous = t
  result = dict(
      total_s=total,
      compile_s=sum(seconds for _, seconds in compiles),
      data_read_s=sum(float(m.group(1)) for _, text in lines if (m := _READ.match(text))),
      steps_per_s=statistics.median(rates) if rates else None,
      stage_steps=totals,
      validations=len(validations),
      validation_s=sum(seconds for _, seconds in validations),
  )
  eval_start = next((t for t, text in lines if text.startswith("Evaluating ")), None)
  if eval_start is None and train_lines:
    eval_start = train_lines[-1][0]
  result["eval_s"] = total - eval_start if eval_start is not None else None
  if train_lines:
    # From the first to the last training line: the steps run in between, and the work
    # there that is done once (compiling: a second stage's step, the first evaluation) or
    # on its own schedule (validations), which the projection does not scale with epochs.
    begin, end = train_lines[0][0], train_lines[-1][0]
    inside = lambda events: sum(seconds for t, seconds in events if begin < t <= end)
    result["loop_s"] = end - begin
    result["loop_steps"] = sum(totals.values()) - train_lines[0][2]
    result["loop_once_s"] = inside(compiles) + inside(validations)
  episodes = [(t, m) for t, text in lines if (m := _EPISODES.search(text))]
  if episodes:
    first, last = episodes[0], episodes[-1]
    done = int(last[1].group(2)) - int(first[1].group(2))
    seconds = last[0] - first[0]
    result["episodes_per_s"] = done / seconds if done and seconds > 0 else float(last[1].group(4))
    result["episodes"] = int(last[1].group(3))
  return result


def projection(recipe: Recipe, run: dict, run_epochs: int, full_epochs: int, every: int) -> float:
  """Seconds of the full recipe from this run's figures (see the module docstring)."""
  if recipe.episodes_full:
    rate = run.get("episodes_per_s")
    if not rate:
      return float("nan")
    return run["total_s"] + (recipe.episodes_full - run["episodes"]) / rate
  rate = run.get("steps_per_s")
  if not rate or "loop_s" not in run:
    return float("nan")
  steps_run = sum(run["stage_steps"].values())
  steps_full = steps_run * full_epochs / run_epochs
  stages = max(1, len(recipe.epoch_fields))
  other = max(0.0, run["loop_s"] - run["loop_steps"] / rate - run["loop_once_s"])
  other_per_epoch = other / (run_epochs * stages)
  val_each = run["validation_s"] / run["validations"] if run["validations"] else 0.0
  full_vals = sum(1 for e in range(1, full_epochs + 1) if e % every == 0 or e == full_epochs)
  return (
      run["total_s"]
      + (steps_full - steps_run) / rate
      + other_per_epoch * (full_epochs - run_epochs) * stages
      + val_each * (full_vals - run["validations"])
  )


def load_config(spec: str):
  """The config `file.py:args` names (a light import: configs load no JAX)."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("recipe_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "results.json"))


def run_recipe(name: str, dtype: str, args, data_dir: str, env: dict, timeout: float) -> dict:
  """One recipe's run in `dtype`, stopped after `timeout` seconds."""
  recipe = RECIPES[name]
  spec = recipe.config + (",smoke" if args.smoke else "")
  config = load_config(spec)
  workdir = os.path.join(args.out, "workdirs", f"{name}_{dtype}")
  shutil.rmtree(workdir, ignore_errors=True)
  # The first read of miniImageNet writes a .npy cache beside the pickles: every run reads
  # the published files, as a first run would.
  shutil.rmtree(os.path.join(data_dir, recipe.data, "groundwork_cache"), ignore_errors=True)
  flags = [f"--config.dtype={dtype}", *recipe.overrides]
  if args.matmul_precision:
    flags.append(f"--config.matmul_precision={args.matmul_precision}")
  run_epochs = full_epochs = 0
  if recipe.episodes_full:
    base = next(
        (
            w
            for d in (dtype, *DTYPES)
            if finished(w := os.path.join(args.out, "workdirs", f"{recipe.base}_{d}"))
        ),
        None,
    )
    if base is None:
      return dict(
          recipe=name, dtype=dtype, error=f"no finished {recipe.base} workdir: run it first"
      )
    size = config.eval.batch_episodes
    episodes = max(2 * size, -(-round(recipe.episodes_full * args.scale) // size) * size)
    flags += [
        f"--config.base_workdir={base}",
        f"--config.data_dir={os.path.join(data_dir, recipe.data)}",
        f"--config.eval.episodes={episodes}",
    ]
  else:
    # The paper's length (the smoke config's own is a few steps), and this run's.
    full_epochs = _nested(load_config(recipe.config), recipe.epoch_fields[0])
    run_epochs = max(1, round(full_epochs * args.scale))
    flags += [f"--config.data_dir={os.path.join(data_dir, recipe.data)}"]
    flags += [f"--config.{field}={run_epochs}" for field in recipe.epoch_fields]
  cmd = [sys.executable, os.path.abspath(__file__), "--launch", f"--config={spec}"]
  # Every run compiles afresh, as a first run does: no programs from the compilation cache.
  cmd += [f"--workdir={workdir}", "--compilation_cache=", *flags]
  print(f"{name} {dtype}: launch/train.py {' '.join(cmd[3:])}", flush=True)
  log_path = os.path.join(args.out, "logs", f"{name}_{dtype}.log")
  lines, code = run_logged(cmd, log_path, timeout, env)
  command = " ".join(["launch/train.py", *cmd[3:]])  # What it runs, as a user would type it.
  result = dict(recipe=name, dtype=dtype, command=command, log=log_path, exit_code=code)
  if code != 0:
    if lines[-1][0] >= timeout:
      return {**result, "error": f"stopped after {timeout:.0f} s (--timeout, --budget-s)"}
    tail = "\n".join(text for _, text in lines[-15:])
    return {**result, "error": f"exit code {code}; the end of {log_path}:\n{tail}"}
  run = parse_run(lines)
  result.update(run)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    result["precision"] = json.load(f).get("precision")
  if recipe.episodes_full:
    result["images_per_s"] = None
  else:
    batch = config.batch_size
    result["images_per_s"] = run["steps_per_s"] * batch if run["steps_per_s"] else None
    result["run_epochs"], result["full_epochs"] = run_epochs, full_epochs
  # Validation every so many epochs (the few-shot trainer); none in the semi-supervised one.
  every = config.validation.every_epochs if "validation" in config else full_epochs + 1
  result["projected_s"] = projection(recipe, run, run_epochs, full_epochs, every)
  return result


def _nested(config, field: str):
  for part in field.split("."):
    config = config[part]
  return config


# ----------------------------------------------------------------------------- step FLOPs


def measure_step(smoke: bool) -> dict:
  """The bfloat16 ResNet-12 train step's TFLOP/s (all-taps count) and the bfloat16 matmul
  peak, both measured here; run in its own process so it holds no device memory while the
  recipes run."""
  import train_speed  # pylint: disable=import-outside-toplevel

  case = train_speed.Case("resnet12", 32, 8) if smoke else train_speed.Case("resnet12", 84, 128)
  n, min_seconds, repeats = (256, 0.2, 2) if smoke else (8192, 2.0, 5)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (case.batch, case.image_size, case.image_size, 3), dtype=np.uint8)
  labels = (np.arange(case.batch) % case.num_classes).astype(np.int32)
  run, flops, compile_s, _ = train_speed.jax_setup(case, images, labels, "auto", "bfloat16")
  steps = train_speed.warm_up(run, min_seconds)
  img_s = statistics.median(case.batch * steps / run(steps) for _ in range(repeats))
  peak = 2.0 * n**3 / min(train_speed.jax_matmul_seconds(n, "bfloat16") for _ in range(5))
  step_flops_s = img_s * flops["step"]
  return dict(
      case=dataclasses.asdict(case),
      images_per_s=img_s,
      step_gflop_per_image=flops["step"] / 1e9,
      step_tflops=step_flops_s / 1e12,
      peak_bf16_tflops=peak / 1e12,
      share_of_peak=step_flops_s / peak,
      compile_s=compile_s,
      matmul_n=n,
  )


def step_figures(args, env: dict) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--measure-step"] + (
      ["--smoke"] if args.smoke else []
  )
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    return {"error": out.stderr[-2000:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def _fmt(value, digits=1) -> str:
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return "-"
  return f"{value:,.{digits}f}"


def _duration(seconds) -> str:
  if seconds is None or not np.isfinite(seconds):
    return "-"
  return f"{seconds:,.0f} s ({seconds / 60:.1f} min)"


def markdown(results: list[dict], step: dict, info: dict) -> str:
  rows = [
      "| recipe | dtype | data read s | compile s | steps/s | images/s | eval s | total s | "
      "projected full recipe |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in results:
    if "error" in r:
      rows.append(f"| {r['recipe']} | {r['dtype']} | failed: {r['error'].splitlines()[0]} |||||||")
      continue
    rate = (
        f"{_fmt(r['episodes_per_s'])} episodes/s"
        if "episodes_per_s" in r
        else _fmt(r["steps_per_s"])
    )
    rows.append(
        f"| {r['recipe']} | {r['dtype']} | {_fmt(r['data_read_s'])} | {_fmt(r['compile_s'])} | "
        f"{rate} | {_fmt(r['images_per_s'], 0)} | {_fmt(r['eval_s'])} | {_fmt(r['total_s'])} | "
        f"{_duration(r['projected_s'])} |"
    )
  lines = [
      f"Recipe times, {info['device']} (JAX {info['jax']}), --scale={info['scale']}"
      + (" (smoke: tiny data and configs)" if info["smoke"] else ""),
      "",
      *rows,
      "",
  ]
  if "error" in step:
    lines.append(f"ResNet-12 step: failed ({step['error'].strip().splitlines()[-1]})")
  else:
    lines.append(
        f"ResNet-12 train step, {step['case']['image_size']}x{step['case']['image_size']}, "
        f"batch {step['case']['batch']}, bfloat16: {step['images_per_s']:,.0f} images/s, "
        f"{step['step_tflops']:,.1f} TFLOP/s (all-taps count), "
        f"{100 * step['share_of_peak']:.0f}% of the bfloat16 matmul peak measured here "
        f"({step['peak_bf16_tflops']:,.1f} TFLOP/s, {step['matmul_n']}^3)."
    )
  lines += ["", "Targets (one H100/H200-class GPU):"]
  by_key = {(r["recipe"], r["dtype"]): r for r in results if "error" not in r}
  for name, (dtype, seconds) in TARGETS.items():
    for d in (dtype,) if dtype else DTYPES:
      r = by_key.get((name, d))
      if r:
        verdict = "met" if r["projected_s"] <= seconds else "not met"
        lines.append(
            f"- {name} {d}: projected {_duration(r['projected_s'])}, target "
            f"{seconds / 60:.0f} min: {verdict}"
        )
  if "share_of_peak" in step:
    verdict = "met" if step["share_of_peak"] >= STEP_SHARE_TARGET else "not met"
    lines.append(
        f"- ResNet-12 step: {100 * step['share_of_peak']:.0f}% of the bfloat16 matmul peak, "
        f"target {100 * STEP_SHARE_TARGET:.0f}%: {verdict}"
    )
  return "\n".join(lines) + "\n"


def main() -> None:
  if sys.argv[1:2] == ["--launch"]:
    launch(sys.argv[2:])
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None, help="scratch directory (default: a new temp dir)")
  parser.add_argument("--data-dir", default=None, help="where the data go (default: OUT/data)")
  parser.add_argument(
      "--scale",
      type=float,
      default=0.05,
      help="fraction of each recipe's training epochs (at least 1) and implanting episodes "
      "(at least 2 batches) to run; evaluation runs in full",
  )
  parser.add_argument("--recipes", default=",".join(RECIPES), help=f"subset of {list(RECIPES)}")
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  parser.add_argument(
      "--matmul-precision",
      default=None,
      choices=("default", "high", "highest"),
      help="config.matmul_precision of every run (default: the configs' own, 'highest'; "
      "'default' is TF32 on a recent NVIDIA GPU)",
  )
  parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
  parser.add_argument(
      "--budget-s",
      type=float,
      default=None,
      help="seconds for everything: the step figure first, then the runs in the order "
      "dtype by dtype (--dtypes), recipe by recipe, until the budget leaves under a minute; "
      "the report is rewritten after each run",
  )
  parser.add_argument("--smoke", action="store_true", help="tiny data and smoke configs (CPU)")
  parser.add_argument("--skip-step", action="store_true", help="do not time the ResNet-12 step")
  parser.add_argument("--measure-step", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure_step:
    print(json.dumps(measure_step(args.smoke)))
    return
  recipes = args.recipes.split(",")
  dtypes = args.dtypes.split(",")
  unknown = [r for r in recipes if r not in RECIPES] + [d for d in dtypes if d not in DTYPES]
  if unknown:
    raise SystemExit(f"unknown {unknown}: recipes {list(RECIPES)}, dtypes {list(DTYPES)}")
  if args.smoke:
    args.scale = 0.0
  args.out = args.out or tempfile.mkdtemp(prefix="recipe_speed_")
  for sub in ("logs", "workdirs"):
    os.makedirs(os.path.join(args.out, sub), exist_ok=True)
  data_dir = args.data_dir or os.path.join(args.out, "data")
  env = {**os.environ, "JAX_LOG_COMPILES": "1", "PYTHONUNBUFFERED": "1"}

  deadline = time.perf_counter() + (args.budget_s or float("inf"))
  written = write_data(data_dir, {RECIPES[r].data for r in recipes}, args.smoke)
  startup_s, device = startup(env)
  print(f"start-up alone: {startup_s:.1f} s on {device['device']}", flush=True)
  step = {"error": "skipped (--skip-step)"} if args.skip_step else step_figures(args, env)
  info = dict(
      **device, scale=args.scale, smoke=args.smoke, startup_s=startup_s, data_written_s=written
  )
  results = []
  for dtype in dtypes:
    for name in recipes:
      left = deadline - time.perf_counter()
      if left < 60:
        results.append(dict(recipe=name, dtype=dtype, error="not run: --budget-s spent"))
        continue
      results.append(run_recipe(name, dtype, args, data_dir, env, min(args.timeout, left)))
      print(json.dumps({k: v for k, v in results[-1].items() if k != "command"}), flush=True)
      write_report(args.out, results, step, info)  # What an interrupted session keeps.
  report = write_report(args.out, results, step, info)
  print("\n" + report)
  print(f"wrote {args.out}/recipe_speed.json and recipe_speed.md")


def write_report(out: str, results: list[dict], step: dict, info: dict) -> str:
  """recipe_speed.json and recipe_speed.md in `out`, as far as the runs went; the table."""
  report = markdown(results, step, info)
  with open(os.path.join(out, "recipe_speed.json"), "w", encoding="utf-8") as f:
    json.dump(dict(info=info, runs=results, step=step), f, indent=1)
  with open(os.path.join(out, "recipe_speed.md"), "w", encoding="utf-8") as f:
    f.write(report)
  return report


if __name__ == "__main__":
  main()
