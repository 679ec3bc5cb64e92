r"""DC+IMP's time to its first batch of episodes, compiling afresh and from the cache.

Each run is a new process (`--child`) that turns on the persistent compilation cache
(`groundwork.training.compilation_cache`, what `launch/train.py --compilation_cache=DIR`
does), builds the case's random-initialised network (`episode_speed.jax_setup`) and trains
implants on two batches of 5-way 5-shot episodes as fsl/train_implanting.py does
(`episode_speed.jax_implanting`: configs/fsl/implanting.py's layers, width and 50 Adam
steps). The first run of a case finds an empty cache folder ("cold"), the second finds what
the first compiled ("warm"). Reported per run:

- first batch s: tracing, compiling (or reading back) and running the first batch;
- episodes/s: the second batch;
- process s: the whole process, interpreter and imports included;
- the mean accuracy of the episodes, which must be the same cold and warm.

  python benchmarks/compilation_cache.py --out=DIR [--cases=resnet12_84,conv4_28]
  JAX_PLATFORMS=cuda python benchmarks/compilation_cache.py --out=DIR   # one GPU

On a CPU the implants train one episode per call (`--implant-batch`, default 1 there, as in
benchmarks/episode_speed.py), elsewhere the config's batch_episodes. Writes
DIR/compilation_cache.json. Results: docs/performance.md, "Compilation cache".
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import episode_speed  # pylint: disable=wrong-import-position


def child(case_name: str, cache: str, batch: int | None, steps: int | None) -> dict:
  from groundwork.training import compilation_cache  # pylint: disable=import-outside-toplevel

  compilation_cache.enable(cache)
  import jax  # pylint: disable=import-outside-toplevel

  case = (episode_speed.CASES | episode_speed.QUICK_CASES)[case_name]
  config, model, state, _ = episode_speed.jax_setup(case)
  rng = np.random.default_rng(0)
  count = episode_speed.POOL_CLASSES * episode_speed.POOL_PER_CLASS
  pool = rng.integers(0, 256, (count, *episode_speed.image_shape(config)), dtype=np.uint8)
  labels = np.repeat(
      np.arange(episode_speed.POOL_CLASSES, dtype=np.int32), episode_speed.POOL_PER_CLASS
  )
  result = episode_speed.jax_implanting(
      case, config, model, state, pool, labels, 0, batch, steps, seed=0
  )
  result["device"] = str(jax.devices()[0].device_kind)
  result["jax"] = jax.__version__
  return result


def run_child(case: str, cache: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--cases={case}", cache]
  cmd += [f"--implant-batch={args.implant_batch}"] if args.implant_batch else []
  cmd += [f"--implant-steps={args.implant_steps}"] if args.implant_steps else []
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["process_seconds"] = time.perf_counter() - start
  result["cache_files"] = len(os.listdir(cache))
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="resnet12_84,conv4_28")
  parser.add_argument("--implant-batch", type=int, default=None)
  parser.add_argument("--implant-steps", type=int, default=None, help="override the 50 steps")
  parser.add_argument("--quick", action="store_true", help="tiny networks, 3 steps (a smoke)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("cache", nargs="?", help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.child:
    print(json.dumps(child(args.cases, args.cache, args.implant_batch, args.implant_steps)))
    return
  if args.quick:
    args.cases, args.implant_steps = ",".join(episode_speed.QUICK_CASES), 3
  args.out = args.out or tempfile.mkdtemp(prefix="compilation_cache_")
  os.makedirs(args.out, exist_ok=True)
  results = {}
  for case in args.cases.split(","):
    cache = tempfile.mkdtemp(prefix=f"xla_{case}_", dir=args.out)
    cold = run_child(case, cache, args)
    warm = run_child(case, cache, args)
    if cold["accuracy"] != warm["accuracy"]:
      raise SystemExit(f"{case}: accuracy {cold['accuracy']} cold, {warm['accuracy']} warm")
    results[case] = dict(cold=cold, warm=warm)
  info = dict(platform=platform.platform(), cpus=os.cpu_count(), loadavg_end=os.getloadavg())
  with open(os.path.join(args.out, "compilation_cache.json"), "w", encoding="utf-8") as f:
    json.dump(dict(info=info, cases=results), f, indent=1)
  print(
      "| case | device | batch | first batch s, cold / warm | episodes/s | process s, cold / warm |"
  )
  print("|---|---|---|---|---|---|")
  for case, r in results.items():
    cold, warm = r["cold"], r["warm"]
    print(
        f"| {case} | {cold['device']} | {cold['batch_episodes']} | "
        f"{cold['first_batch_seconds']:.1f} / {warm['first_batch_seconds']:.1f} | "
        f"{warm['episodes_per_s']:.3g} | "
        f"{cold['process_seconds']:.1f} / {warm['process_seconds']:.1f} |"
    )
  print(f"same accuracies cold and warm; wrote {args.out}/compilation_cache.json")


if __name__ == "__main__":
  main()
