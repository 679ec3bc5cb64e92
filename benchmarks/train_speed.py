r"""Training-step throughput of this project's JAX step against the same step in PyTorch.

For each case, one full step of `fsl.train.train_step` (normalisation, forward in train mode,
BatchNorm statistics, cosine-classifier loss, backward, SGD with Nesterov momentum and weight
decay; jitted with the state donated, as `fsl.train.train_and_evaluate` does) and the same
network and step in PyTorch (benchmarks/torch_step.py, run by an interpreter that has torch),
on the same uint8 inputs, timed in alternating repeats. Reports median images/s of each, their
ratio, and achieved GFLOP/s against the machine's peak, measured here as the best of a few
4096^3 float32 matmuls in each framework. A step's FLOPs are its convolutions' and matrix
products' forward, input-gradient and weight-gradient FLOPs, kernel taps on padding included
as in the usual model figures (benchmarks/flops.py); the JSON also records XLA's
cost-analysis count of the forward pass, which leaves out padding taps. On CPU run it under
the allocator training uses (`make benchmark` preloads jemalloc); the PyTorch worker inherits it.

  pip install -r benchmarks/requirements-benchmark.txt   # or into a separate venv, then
  make benchmark NAME=train_speed ARGS="--torch-python=/path/to/venv/bin/python --out=DIR"
  python benchmarks/train_speed.py --quick --out=/tmp/bench   # smoke check, ~1 minute

On a GPU: `--device=gpu` leaves JAX on its default (CUDA) backend and runs the PyTorch side on
cuda (channels-last, TF32 matmuls allowed as for cuDNN convolutions); `--dtype=bfloat16` sets the
encoders' compute dtype in JAX and autocast in PyTorch. The peak is then the fp32 (TF32) matmul.

  python benchmarks/train_speed.py --device=gpu --dtype=bfloat16 --out=DIR

`--jax-layers=auto,flax` also times the encoders' plain flax layers next to what
`build_encoder` picks by default (on CPU with cpu_kernels/ installed: its oneDNN layers).
Writes DIR/train_speed.json and DIR/train_speed.png. Results: docs/performance.md.
"""

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Case:
  encoder: str
  image_size: int
  batch: int
  channels: int = 3
  head: str = "dc"
  num_classes: int = 64
  encoder_kwargs: tuple = ()  # (key, value) pairs, hashable.


CASES = {
    "resnet12_84_b16": Case("resnet12", 84, 16),
    "resnet12_84_b64": Case("resnet12", 84, 64),
    "resnet12_32_b64": Case("resnet12", 32, 64),
    "resnet12_wide_84_b16": Case("resnet12_wide", 84, 16),
    "resnet12_wide_84_b64": Case("resnet12_wide", 84, 64),
    "resnet12_wide_32_b64": Case("resnet12_wide", 32, 64),
    "resnet18_84_b64": Case("resnet18", 84, 64),
    "cnn13_32_b100": Case("cnn13", 32, 100, head="gap", num_classes=10),
    "conv4_28_b64": Case("conv4", 28, 64, channels=1, encoder_kwargs=(("pool_blocks", 2),)),
}
QUICK_CASES = {
    "resnet12_32_b8": Case("resnet12", 32, 8),
    "conv4_28_b16": Case("conv4", 28, 16, channels=1, encoder_kwargs=(("pool_blocks", 2),)),
}
MEAN_STD = {1: ((0.5,), (0.5,)), 3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


# ----------------------------------------------------------------------------- JAX side


def fsl_config():
  """The few-shot trainer's own config (SGD, Nesterov, weight decay); fields set per case."""
  spec = importlib.util.spec_from_file_location(
      "dense_classification", os.path.join(ROOT, "configs", "fsl", "dense_classification.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("dataset=miniimagenet")


# Which encoder layers a run times: build_encoder's own choice, the CPU kernels, plain flax.
LAYERS = {"auto": None, "kernels": True, "flax": False}


def jax_setup(case: Case, images: np.ndarray, labels: np.ndarray, layers: str, dtype: str):
  """Timer of the jitted real train step; FLOPs per image (forward, step, XLA's forward)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel

  from fsl import train as fsl_train  # pylint: disable=import-outside-toplevel
  from groundwork import training  # pylint: disable=import-outside-toplevel
  from groundwork.data import AugmentSpec  # pylint: disable=import-outside-toplevel
  import flops as flops_lib  # pylint: disable=import-outside-toplevel

  def model_with(cpu_kernels):
    config = fsl_config()
    config.encoder, config.head = case.encoder, case.head
    config.encoder_kwargs = ml_collections.ConfigDict(
        dict(case.encoder_kwargs, cpu_kernels=cpu_kernels)
    )
    config.dtype = dtype
    return config, fsl_train.build_model(config, case.num_classes)

  config, model = model_with(LAYERS[layers])
  # FLOPs are counted on plain flax layers: the kernels' FFI calls carry no shapes to read.
  _, flax_model = model_with(False)
  tx, _ = training.make_optimizer(config.optim, 1000)  # lr schedule: irrelevant here
  state = fsl_train.create_state(config, model, images.shape[1:], tx)
  mean, std = MEAN_STD[case.channels]
  step = jax.jit(
      functools.partial(
          fsl_train.train_step, head=case.head, augment_spec=AugmentSpec(mean=mean, std=std)
      ),
      donate_argnums=(0,),
  )
  x, y = jax.device_put(images), jax.device_put(labels)
  keys = [training.step_rng(0, i) for i in range(64)]
  start = time.perf_counter()
  compiled = step.lower(state, x, y, keys[0]).compile()
  compile_s = time.perf_counter() - start

  forward_args = jax.device_put(
      (state.params, jnp.zeros((1, *images.shape[1:]), jnp.float32)), jax.devices("cpu")[0]
  )

  def forward(params, im):
    return flax_model.apply({"params": params, "batch_stats": state.batch_stats}, im, train=False)

  flops = dict(zip(("forward", "step"), flops_lib.training_step_flops(forward, *forward_args)))
  # XLA's own count, kept for comparison with earlier runs, leaves out the kernel taps on
  # padding (see benchmarks/flops.py). It is read on plain flax layers compiled for the CPU:
  # FFI calls and a GPU's library calls are not counted.
  cost = jax.jit(forward).lower(*forward_args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops["xla_forward"] = float(cost["flops"])
  holder = {"state": state, "i": 0}

  def run(steps: int) -> float:
    begin = time.perf_counter()
    for _ in range(steps):
      holder["state"], metrics = compiled(holder["state"], x, y, keys[holder["i"] % len(keys)])
      holder["i"] += 1
    jax.block_until_ready((holder["state"], metrics))
    return time.perf_counter() - begin

  params = sum(p.size for p in jax.tree_util.tree_leaves(state.params))
  return run, flops, compile_s, int(params)


def jax_matmul_seconds(n: int, dtype: str = "float32") -> float:
  """Seconds of one n x n x n matmul in `dtype` (after a first, compiling call)."""
  import jax  # pylint: disable=import-outside-toplevel

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n)).astype(dtype)
  mm = jax.jit(lambda m: m @ m)
  jax.block_until_ready(mm(a))
  start = time.perf_counter()
  jax.block_until_ready(mm(a))
  return time.perf_counter() - start


# ----------------------------------------------------------------------------- PyTorch side


class TorchWorker:
  """A PyTorch worker script of benchmarks/ in a subprocess, driven one JSON line at a time."""

  def __init__(self, python: str, script: str = "torch_step.py"):
    self.proc = subprocess.Popen(
        [python, os.path.join(ROOT, "benchmarks", script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

  def call(self, **msg) -> dict:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(
          "the PyTorch worker exited; run benchmarks/torch_step.py by hand "
          "with the same interpreter to see its error."
      )
    reply = json.loads(line)
    if "error" in reply:
      raise RuntimeError(reply["error"])
    return reply

  def close(self) -> None:
    self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def select_cases(names: str, cases: dict) -> dict:
  """The cases named in `names` (comma-separated, or 'all'), in that order."""
  if names == "all":
    return cases
  unknown = [c for c in names.split(",") if c not in cases]
  if unknown:
    raise SystemExit(f"unknown case(s) {unknown}; choose from {list(cases)}")
  return {c: cases[c] for c in names.split(",")}


def torch_python(arg: str | None) -> str:
  python = arg or os.environ.get("BENCH_TORCH_PYTHON") or sys.executable
  check = subprocess.run(
      [python, "-c", "import torch; print(torch.__version__)"],
      capture_output=True,
      text=True,
      check=False,
  )
  if check.returncode != 0:
    raise SystemExit(
        f"{python} cannot import torch. Install benchmarks/"
        "requirements-benchmark.txt into some environment and pass its "
        "interpreter with --torch-python (or BENCH_TORCH_PYTHON)."
    )
  return python


# ----------------------------------------------------------------------------- measurement


def steps_for(seconds_per_step: float, min_seconds: float) -> int:
  return max(1, int(np.ceil(min_seconds / max(seconds_per_step, 1e-6))))


def warm_up(timer, min_seconds: float) -> int:
  """Runs steps for min_seconds; returns how many steps make a repeat last that long.

  The first steps of either framework are slow for a while (kernel generation, allocator
  growth), not only the first one: a single warm-up step left JAX's first repeat ~25% slow.
  """
  timer(1)
  elapsed, fastest = 0.0, float("inf")
  while elapsed < min_seconds:
    seconds = timer(1)
    elapsed, fastest = elapsed + seconds, min(fastest, seconds)
  return steps_for(fastest, min_seconds)


def bench_case(
    name: str,
    case: Case,
    worker: TorchWorker,
    layer_sets: list[str],
    repeats: int,
    min_seconds: float,
    workdir: str,
    device: str = "cpu",
    dtype: str = "float32",
    pause: float = 1.0,
) -> dict:
  rng = np.random.default_rng(0)
  images = rng.integers(
      0, 256, (case.batch, case.image_size, case.image_size, case.channels), dtype=np.uint8
  )
  labels = (np.arange(case.batch) % case.num_classes).astype(np.int32)
  np.save(os.path.join(workdir, "images.npy"), images)
  np.save(os.path.join(workdir, "labels.npy"), labels)
  mean, std = MEAN_STD[case.channels]
  torch_info = worker.call(
      cmd="setup",
      inputs=workdir,
      case=dict(
          encoder=case.encoder,
          encoder_kwargs=dict(case.encoder_kwargs),
          head=case.head,
          num_classes=case.num_classes,
          mean=mean,
          std=std,
          device="cuda" if device == "gpu" else "cpu",
          dtype=dtype,
      ),
  )

  runners, flops, compile_s, params = {}, {}, {}, 0
  for layers in layer_sets:
    runners[layers], flops, compile_s[layers], params = jax_setup(
        case, images, labels, layers, dtype
    )
  timers = {f"jax_{c}": r for c, r in runners.items()}
  timers["torch"] = lambda n: worker.call(cmd="time", steps=n)["seconds"]
  steps = {key: warm_up(timer, min_seconds) for key, timer in timers.items()}

  img_s = {k: [] for k in timers}
  order = list(timers)
  for r in range(repeats):
    for key in (order if r % 2 == 0 else order[::-1]):  # Alternate who goes first.
      # The framework that ran last leaves worker threads spinning for a while
      # (OpenMP, Eigen); a pause keeps them from eating into the next one's time.
      time.sleep(pause)
      img_s[key].append(case.batch * steps[key] / timers[key](steps[key]))
  medians = {k: statistics.median(v) for k, v in img_s.items()}
  step_flops = flops["step"]
  result = dict(
      case=dataclasses.asdict(case),
      params_jax=params,
      params_torch=torch_info["params"],
      forward_gflop_per_image=flops["forward"] / 1e9,
      step_gflop_per_image=step_flops / 1e9,
      xla_forward_gflop_per_image=flops["xla_forward"] / 1e9,
      compile_s=compile_s,
      steps_per_repeat=steps,
      img_s=img_s,
      median_img_s=medians,
      gflops={k: m * step_flops / 1e9 for k, m in medians.items()},
  )
  result["ratio"] = {f"jax_{c}": medians[f"jax_{c}"] / medians["torch"] for c in layer_sets}
  print(
      f"{name:<24}"
      + "  ".join(f"{k} {v:8.1f} img/s" for k, v in medians.items())
      + "  ratio "
      + " ".join(f"{v:.2f}" for v in result["ratio"].values()),
      flush=True,
  )
  return result


def peak_gflops(worker: TorchWorker, n: int, tries: int, device: str = "cpu") -> dict:
  flop = 2.0 * n**3
  jax_best = min(jax_matmul_seconds(n) for _ in range(tries))
  torch_best = min(
      worker.call(cmd="matmul", n=n, device="cuda" if device == "gpu" else "cpu")["seconds"]
      for _ in range(tries)
  )
  return {"n": n, "jax": flop / jax_best / 1e9, "torch": flop / torch_best / 1e9}


# ----------------------------------------------------------------------------- output


def print_table(results: dict, peak: float) -> None:
  keys = list(next(iter(results.values()))["median_img_s"])
  print(f"\npeak {peak:.0f} GFLOP/s (best fp32 matmul)")
  header = f"{'case':<24}" + "".join(f"{k + ' img/s':>16}" for k in keys)
  header += "".join(f"{'ratio ' + k[4:]:>12}" for k in keys if k != "torch")
  header += "".join(f"{k + ' GF/s(%pk)':>22}" for k in keys)
  print(header)
  for name, r in results.items():
    row = f"{name:<24}" + "".join(f"{r['median_img_s'][k]:>16.1f}" for k in keys)
    row += "".join(f"{r['ratio'][k]:>12.2f}" for k in keys if k != "torch")
    row += "".join(f"{r['gflops'][k]:>14.0f} ({100 * r['gflops'][k] / peak:3.0f}%)" for k in keys)
    print(row)


def bar_chart(results: dict, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  names = list(results)
  keys = list(results[names[0]]["median_img_s"])
  width = 0.8 / len(keys)
  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4.5))
  for i, key in enumerate(keys):
    xs = np.arange(len(names)) + (i - (len(keys) - 1) / 2) * width
    ax.bar(xs, [results[n]["median_img_s"][key] for n in names], width, label=key)
  ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
  ax.set_yscale("log")
  ax.set_ylabel("training images / s (median, log scale)")
  ax.set_title(title, fontsize=9)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--cases", default="all", help=f"comma-separated subset of {list(CASES)}, or 'all'"
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
      "--min-seconds",
      type=float,
      default=2.0,
      help="each repeat runs enough steps to last at least this long",
  )
  parser.add_argument(
      "--jax-layers",
      default="auto",
      help="comma-separated encoder layers to time: auto (what build_encoder "
      "picks), kernels (cpu_kernels/), flax (plain flax)",
  )
  parser.add_argument(
      "--torch-python",
      default=None,
      help="interpreter with torch (default: $BENCH_TORCH_PYTHON, else this one)",
  )
  parser.add_argument("--matmul-n", type=int, default=4096)
  parser.add_argument(
      "--pause",
      type=float,
      default=1.0,
      help="seconds of rest before each timed run (lets the other "
      "framework's worker threads stop spinning)",
  )
  parser.add_argument(
      "--device",
      default="cpu",
      choices=("cpu", "gpu"),
      help="cpu pins JAX to its CPU backend and PyTorch to the CPU; gpu uses "
      "JAX's default accelerator backend and PyTorch on cuda",
  )
  parser.add_argument(
      "--dtype",
      default="float32",
      choices=("float32", "bfloat16"),
      help="encoder compute dtype (PyTorch: autocast)",
  )
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  parser.add_argument("--quick", action="store_true", help="two tiny cases, a smoke check")
  args = parser.parse_args()

  sys.path.insert(0, ROOT)
  if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.quick:
    cases, args.repeats, args.min_seconds, args.matmul_n = QUICK_CASES, 2, 0.2, 1024
  else:
    cases = select_cases(args.cases, CASES)
  layer_sets = args.jax_layers.split(",")
  unknown = [name for name in layer_sets if name not in LAYERS]
  if unknown:
    raise SystemExit(f"--jax-layers: unknown {unknown}; choose from {list(LAYERS)}")
  os.makedirs(args.out, exist_ok=True)

  import jax  # pylint: disable=import-outside-toplevel

  if args.device == "gpu" and jax.default_backend() != "gpu":
    raise SystemExit(
        f"--device=gpu but JAX's backend is {jax.default_backend()!r}: install "
        "the CUDA build of jax (README) or leave JAX_PLATFORMS unset."
    )
  worker = TorchWorker(torch_python(args.torch_python))
  info = dict(
      platform=platform.platform(),
      cpus=os.cpu_count(),
      backend=jax.default_backend(),
      jax=jax.__version__,
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      allocator=os.path.basename(os.environ.get("LD_PRELOAD", "")) or "system",
      torch_threads=worker.call(cmd="matmul", n=64)["threads"],
      loadavg_start=os.getloadavg(),
      repeats=args.repeats,
      jax_layers=layer_sets,
      device=args.device,
      dtype=args.dtype,
      accelerator=str(jax.devices()[0].device_kind),
  )
  start = time.perf_counter()
  peak = peak_gflops(worker, args.matmul_n, 3, args.device)
  print(
      f"matmul {args.matmul_n}^3 fp32: jax {peak['jax']:.0f}, torch {peak['torch']:.0f} "
      f"GFLOP/s; load average {info['loadavg_start']}",
      flush=True,
  )
  best_peak = max(peak["jax"], peak["torch"])
  results = {}
  with tempfile.TemporaryDirectory() as workdir:
    for name, case in cases.items():
      r = bench_case(
          name,
          case,
          worker,
          layer_sets,
          args.repeats,
          args.min_seconds,
          workdir,
          args.device,
          args.dtype,
          args.pause,
      )
      r["percent_of_peak"] = {k: 100 * g / best_peak for k, g in r["gflops"].items()}
      results[name] = r
      # Rewritten after every case, so an interrupted run keeps what it measured.
      info.update(loadavg_end=os.getloadavg(), seconds=time.perf_counter() - start)
      with open(os.path.join(args.out, "train_speed.json"), "w", encoding="utf-8") as f:
        json.dump(dict(info=info, peak_gflops=peak, cases=results), f, indent=1)
  worker.close()
  print_table(results, best_peak)
  bar_chart(
      results,
      os.path.join(args.out, "train_speed.png"),
      f"one SGD training step, {info['accelerator']} ({args.dtype}), {info['cpus']} CPUs, "
      f"load {info['loadavg_start'][0]:.1f}",
  )
  print(f"wrote {args.out}/train_speed.json and train_speed.png ({info['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
