r"""Episodes per second of 5-way 5-shot evaluation (JAX against PyTorch) and of implanting.

All cases are 5-way 5-shot episodes with 15 queries per class (100 images per episode) drawn
with `groundwork.data.make_episodes` from a pool of random uint8 images (20 classes x 20),
classified by this project's rule: class-mean prototypes of L2-normalised pooled features,
cosine nearest prototype. Networks are random-initialised (speed does not depend on the
weights), built from the project's own configs (configs/fsl/dense_classification.py for the
encoder, image size and normalisation; configs/fsl/implanting.py for the implants). Measured:

(a) JAX, this project's evaluation path (`fsl.train.embed_fn`, `embed_in_batches`,
    `fsl.episodic_evaluation.episode_accuracies`), two figures:
    - "per-episode embed": each episode's 100 support + query images are embedded by their
      own eval-mode forward pass (one batch of 100), then `episode_accuracies` classifies
      all the episodes of the repeat (one call, its trace/compile included). This is the work
      a peer that embeds per episode does, and what (b) is compared with.
    - "classify only": how `fsl.train.evaluate_episodes` works: the pool is embedded once
      (timed on its own, reported as images/s), then one `episode_accuracies` call over
      config.eval.episodes (10,000) episodes in batches of config.eval.batch_episodes (500),
      each episode a gather of precomputed features (call time, trace/compile included).
(b) PyTorch peer of the per-episode figure: the same encoder (the network definitions of
    benchmarks/torch_step.py, loaded with the very weights of the JAX network, so features and
    accuracies are checked to agree), per episode: embed the 100 images in eval mode under
    inference_mode, prototypes, cosine, accuracy (benchmarks/torch_episodes.py). It runs as a
    worker subprocess under an interpreter with torch (train_speed.TorchWorker's protocol), timed in alternating repeats
    with (a) in the same invocation; the ratio is of the medians.
(c) DC+IMP implanting, JAX only: `fsl.implanting.implant_episode_accuracies` as
    fsl/train_implanting.py calls it with configs/fsl/implanting.py's settings (16 implant
    channels per implanted layer, 50 Adam steps at lr 1e-3 on each episode's support, pooled
    scoring, scale = the base classifier's). Episodes/s are taken from the batches after the
    first (which also compiles); the first batch's time is reported on its own. There is no
    PyTorch peer for implanting here: the reference is not a packaged step (no PyTorch library
    ships implanting as a function one could call on a network and an episode), and a port
    written for this benchmark would time our own port, not a reference.

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install -r benchmarks/requirements-benchmark.txt
  make benchmark NAME=episode_speed ARGS="--torch-python=/tmp/torchvenv/bin/python --out=/tmp/bench"
  .venv/bin/python benchmarks/episode_speed.py --quick --out /tmp/bench   # smoke check, ~30 s

JAX runs on its CPU backend unless JAX_PLATFORMS is set (JAX_PLATFORMS=cuda on a GPU machine);
`--torch-device cuda` runs the PyTorch side on the GPU. On CPU implants are trained one episode
per call (`--implant-batch 1`: the oneDNN convolutions run a batch's episodes one after another,
so larger batches gain nothing there); elsewhere the config's batch_episodes (64).
Writes DIR/episode_speed.json.

Results: docs/performance.md.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K_SHOT = 5
POOL_CLASSES, POOL_PER_CLASS = 20, 20
NUM_BASE_CLASSES = 64  # Size of the (unused) base classifier; does not affect embedding.


@dataclasses.dataclass(frozen=True)
class Case:
  dataset: str  # The config's dataset: image size, channels, normalisation, implant layers.
  encoder: str
  episodes: int  # Per-episode figure: episodes per repeat.
  implant_episodes: int  # Implanting: episodes in all, the first batch included.
  smoke: bool = False  # The configs' tiny encoder widths (the --quick cases).


CASES = {
    "resnet12_84": Case("miniimagenet", "resnet12", episodes=4, implant_episodes=3),
    "conv4_28": Case("omniglot", "conv4", episodes=1000, implant_episodes=12),
}
QUICK_CASES = {
    "resnet12_tiny_32": Case("cifar_fs", "resnet12", episodes=4, implant_episodes=3, smoke=True),
    "conv4_tiny_28": Case("omniglot", "conv4", episodes=4, implant_episodes=3, smoke=True),
}


def load_config(name: str, arg: str):
  """configs/fsl/<name>.py's get_config(arg)."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "configs", "fsl", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ----------------------------------------------------------------------------- JAX side


def jax_setup(case: Case):
  """(config, FewShotNet, TrainState, fsl.train.embed_fn) of a random-initialised network."""
  from fsl import train as fsl_train  # pylint: disable=import-outside-toplevel
  from groundwork import training  # pylint: disable=import-outside-toplevel

  arg = f"dataset={case.dataset},encoder={case.encoder},head=dc"
  config = load_config("dense_classification", arg)
  if case.smoke:  # Tiny widths only; the evaluation protocol stays the full one.
    config.encoder_kwargs = load_config("dense_classification", arg + ",smoke").encoder_kwargs
  model = fsl_train.build_model(config, NUM_BASE_CLASSES)
  tx, _ = training.make_optimizer(config.optim, 1)
  state = fsl_train.create_state(config, model, image_shape(config), tx)
  return config, model, state, fsl_train.embed_fn(state, config)


def image_shape(config) -> tuple[int, int, int]:
  from groundwork.data import augment_spec_for  # pylint: disable=import-outside-toplevel

  channels = len(augment_spec_for(config.dataset, train=False).mean)
  return config.image_size, config.image_size, channels


def local_episodes(episodes):
  """The episodes re-indexed into features stacked episode after episode (support, query)."""
  from groundwork.data import Episodes  # pylint: disable=import-outside-toplevel

  count, s, q = len(episodes), episodes.support_idx.shape[1], episodes.query_idx.shape[1]
  base = (np.arange(count, dtype=np.int32) * (s + q))[:, None]
  return Episodes(
      support_idx=base + np.arange(s, dtype=np.int32),
      query_idx=base + s + np.arange(q, dtype=np.int32),
      support_labels=episodes.support_labels,
      query_labels=episodes.query_labels,
  )


def jax_per_episode(embed, config, pool: np.ndarray, episodes) -> np.ndarray:
  """Embeds each episode's own images (one forward pass of 100), then classifies them all."""
  from fsl.episodic_evaluation import (  # pylint: disable=import-outside-toplevel
      embed_in_batches,
      episode_accuracies,
  )

  features = []
  for s_idx, q_idx in zip(episodes.support_idx, episodes.query_idx):
    images = pool[np.concatenate([s_idx, q_idx])]
    features.append(embed_in_batches(lambda b: embed(b)[0], images, len(images)))
  return episode_accuracies(
      np.concatenate(features),
      local_episodes(episodes),
      n_way=config.eval.n_way,
      batch_size=config.eval.batch_episodes,
  )


def jax_per_episode_features(embed, pool: np.ndarray, episodes, e: int) -> np.ndarray:
  """Pooled features of episode e's support and query images, as jax_per_episode embeds them."""
  from fsl.episodic_evaluation import embed_in_batches  # pylint: disable=import-outside-toplevel

  images = pool[np.concatenate([episodes.support_idx[e], episodes.query_idx[e]])]
  return np.asarray(embed_in_batches(lambda b: embed(b)[0], images, len(images)))


class BatchClock:
  """A `progress` callback that records when each batch of episodes finished."""

  def __init__(self):
    self.start, self.done = time.perf_counter(), []

  def __call__(self, done: int, total: int) -> None:
    self.done.append((done, time.perf_counter()))

  def first_batch_seconds(self) -> float:
    return self.done[0][1] - self.start

  def steady_episodes_per_s(self) -> float | None:
    """Episodes/s over the batches after the first (which compiles); None if only one."""
    if len(self.done) < 2:
      return None
    (n0, t0), (n1, t1) = self.done[0], self.done[-1]
    return (n1 - n0) / (t1 - t0)


def jax_classify_only(embed, config, pool: np.ndarray, episodes, repeats: int) -> dict:
  """evaluate_episodes' path: the pool embedded once, then gathers per episode."""
  from fsl.episodic_evaluation import (  # pylint: disable=import-outside-toplevel
      embed_in_batches,
      episode_accuracies,
  )

  np.asarray(embed(pool[: config.eval.embed_batch])[0])  # Compiles this batch size's forward.
  begin = time.perf_counter()
  features = embed_in_batches(lambda b: embed(b)[0], pool, config.eval.embed_batch)
  embed_s = time.perf_counter() - begin
  call_s, first_s, steady = [], [], []
  for _ in range(repeats):
    clock = BatchClock()
    accuracies = episode_accuracies(
        features,
        episodes,
        n_way=config.eval.n_way,
        batch_size=config.eval.batch_episodes,
        progress=clock,
    )
    call_s.append(time.perf_counter() - clock.start)
    first_s.append(clock.first_batch_seconds())
    steady.append(clock.steady_episodes_per_s())
  return dict(
      episodes=len(episodes),
      batch_episodes=config.eval.batch_episodes,
      embed_batch=config.eval.embed_batch,
      pool_embed_seconds=embed_s,
      pool_images_per_s=len(pool) / embed_s,
      call_seconds=call_s,
      first_batch_seconds=first_s,
      episodes_per_s=statistics.median(len(episodes) / s for s in call_s),
      steady_episodes_per_s=(statistics.median(steady) if None not in steady else None),
      accuracy=float(np.mean(accuracies)),
  )


def jax_implanting(
    case: Case,
    config,
    model,
    state,
    pool: np.ndarray,
    labels: np.ndarray,
    episodes_wanted: int,
    batch: int | None,
    steps: int | None,
    seed: int,
) -> dict:
  """DC+IMP as fsl/train_implanting.py runs it, timed per batch of episodes."""
  import jax  # pylint: disable=import-outside-toplevel
  from fsl.implanting import (  # pylint: disable=import-outside-toplevel
      implant_episode_accuracies,
      implanted_encoder,
  )
  from fsl.train_implanting import implant_config  # pylint: disable=import-outside-toplevel
  from groundwork import training  # pylint: disable=import-outside-toplevel
  from groundwork.data import (  # pylint: disable=import-outside-toplevel
      augment,
      augment_spec_for,
      make_episodes,
  )

  imp = load_config("implanting", f"dataset={case.dataset}")
  if batch is None:  # The README's CPU setting; the config's batch elsewhere.
    batch = 1 if jax.default_backend() == "cpu" else imp.eval.batch_episodes
  count = max(2 * batch, -(-episodes_wanted // batch) * batch)  # Whole batches, at least two.
  implanted = implanted_encoder(model.encoder, tuple(imp.implant.layers), imp.implant.width)
  frozen = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
  settings = implant_config(imp.implant, state, steps)
  spec = augment_spec_for(config.dataset, train=False)
  episodes = make_episodes(labels, imp.eval.n_way, K_SHOT, imp.eval.n_query, count, seed)
  clock = BatchClock()
  accuracies = implant_episode_accuracies(
      implanted,
      frozen,
      pool,
      episodes,
      training.seed_key(imp.seed),
      settings,
      input_fn=lambda x: augment.normalize(x, spec.mean, spec.std),
      batch_size=batch,
      progress=clock,
  )
  per_s = clock.steady_episodes_per_s()
  return dict(
      episodes=count,
      batch_episodes=batch,
      layers=list(imp.implant.layers),
      width=imp.implant.width,
      steps=settings.steps,
      optimizer=settings.optimizer,
      learning_rate=settings.learning_rate,
      first_batch_seconds=clock.first_batch_seconds(),
      episodes_per_s=per_s,
      seconds_per_episode=1 / per_s,
      accuracy=float(np.mean(accuracies)),
  )


def torch_weights(case: Case, state) -> dict[str, np.ndarray]:
  """The encoder's variables in torch_step.encoder's Conv2d/BatchNorm2d order, torch layouts."""
  params, stats = state.params["encoder"], state.batch_stats["encoder"]
  layers = {
      "resnet12": ("conv0", "bn0", "conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"),
      "conv4": ("conv", "bn"),
  }[case.encoder]
  out, i = {}, 0
  for block in sorted(params):  # block0..block3
    for name in layers:
      p = params[block][name]
      if "conv" in name:
        out[f"{i:03d}_conv_weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
        if "bias" in p:
          out[f"{i:03d}_conv_bias"] = np.asarray(p["bias"])
      else:
        s = stats[block][name]
        out[f"{i:03d}_bn_weight"] = np.asarray(p["scale"])
        out[f"{i:03d}_bn_bias"] = np.asarray(p["bias"])
        out[f"{i:03d}_bn_running_mean"] = np.asarray(s["mean"])
        out[f"{i:03d}_bn_running_var"] = np.asarray(s["var"])
      i += 1
  return out


# ----------------------------------------------------------------------------- measurement


def bench_case(name: str, case: Case, worker, args, workdir: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from groundwork.data import (  # pylint: disable=import-outside-toplevel
      augment_spec_for,
      make_episodes,
  )

  config, model, state, embed = jax_setup(case)
  n_way, n_query = config.eval.n_way, config.eval.n_query
  shape = image_shape(config)
  rng = np.random.default_rng(0)
  pool = rng.integers(0, 256, (POOL_CLASSES * POOL_PER_CLASS, *shape), dtype=np.uint8)
  labels = np.repeat(np.arange(POOL_CLASSES, dtype=np.int32), POOL_PER_CLASS)
  count = args.episodes or case.episodes
  episodes = make_episodes(labels, n_way, K_SHOT, n_query, count, seed=0)
  spec = augment_spec_for(config.dataset, train=False)
  np.save(os.path.join(workdir, "pool.npy"), pool)
  episodes.save(os.path.join(workdir, "episodes.npz"))
  np.savez(os.path.join(workdir, "weights.npz"), **torch_weights(case, state))
  torch_info = worker.call(
      cmd="setup",
      inputs=workdir,
      case=dict(
          encoder=case.encoder,
          encoder_kwargs=config.encoder_kwargs.to_dict(),
          mean=spec.mean,
          std=spec.std,
          device=args.torch_device,
      ),
  )
  params = sum(p.size for p in jax.tree_util.tree_leaves(state.params["encoder"]))

  # Same weights, same images: the two frameworks' features must agree.
  ours = jax_per_episode_features(embed, pool, episodes, 0)
  theirs = np.asarray(worker.call(cmd="features", episode=0)["features"], np.float32)
  feature_rel_diff = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)))

  # Warm-up (compiles the batch-of-100 forward pass; first PyTorch allocations).
  jax_per_episode(embed, config, pool, episodes[:1])
  worker.call(cmd="time", episodes=1)

  def time_jax():
    begin = time.perf_counter()
    acc = jax_per_episode(embed, config, pool, episodes)
    return time.perf_counter() - begin, np.asarray(acc)

  def time_torch():
    reply = worker.call(cmd="time", episodes=count)
    return reply["seconds"], np.asarray(reply["accuracies"])

  timers = {"jax": time_jax, "torch": time_torch}
  per_s = {k: [] for k in timers}
  accuracies = {}
  for r in range(args.repeats):
    # Alternate who goes first.
    for key in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
      seconds, accuracies[key] = timers[key]()
      per_s[key].append(count / seconds)
  medians = {k: statistics.median(v) for k, v in per_s.items()}
  same = int(np.sum(np.isclose(accuracies["jax"], accuracies["torch"])))
  # In queries: random networks give near-tied cosines, which float rounding may flip.
  query_diff = int(
      np.round(np.max(np.abs(accuracies["jax"] - accuracies["torch"])) * n_way * n_query)
  )

  classify_episodes = args.classify_episodes or config.eval.episodes
  classify = jax_classify_only(
      embed,
      config,
      pool,
      make_episodes(labels, n_way, K_SHOT, n_query, classify_episodes, seed=config.eval.seed),
      args.repeats,
  )
  implant = None
  if not args.no_implant:
    implant = jax_implanting(
        case,
        config,
        model,
        state,
        pool,
        labels,
        args.implant_episodes or case.implant_episodes,
        args.implant_batch,
        args.implant_steps,
        seed=1,
    )

  result = dict(
      case=dataclasses.asdict(case),
      encoder_kwargs=config.encoder_kwargs.to_dict(),
      image_shape=shape,
      n_way=n_way,
      k_shot=K_SHOT,
      n_query=n_query,
      params_jax=int(params),
      params_torch=torch_info["params"],
      per_episode_embed=dict(
          episodes_per_repeat=count,
          episodes_per_s=per_s,
          median_episodes_per_s=medians,
          ratio_jax_over_torch=medians["jax"] / medians["torch"],
          accuracy={k: float(np.mean(v)) for k, v in accuracies.items()},
          episodes_with_equal_accuracy=f"{same}/{count}",
          max_difference_in_queries=query_diff,
      ),
      feature_max_relative_difference=feature_rel_diff,
      classify_only_jax=classify,
      implanting_jax=implant,
      loadavg_end=os.getloadavg(),
  )
  print(
      f"{name}: {shape[0]}x{shape[1]}x{shape[2]}, {case.encoder} "
      f"{config.encoder_kwargs.to_dict()}, {params:,} parameters, "
      f"{n_way}-way {K_SHOT}-shot {n_query} queries",
      flush=True,
  )
  print(
      f"  per-episode embed (100 images embedded per episode) + classify, {count} episodes "
      f"x {args.repeats} repeats: JAX {medians['jax']:.3g} ep/s, PyTorch "
      f"{medians['torch']:.3g} ep/s, JAX/PyTorch {medians['jax'] / medians['torch']:.2f}"
      f"  [same weights: features max rel diff {feature_rel_diff:.1e}, accuracies equal in "
      f"{same}/{count} episodes"
      + (
          f", the others by at most {query_diff} of {n_way * n_query} queries"
          if same < count
          else ""
      )
      + "]",
      flush=True,
  )
  if args.quick:
    print(
        "  (--quick: so few episodes that the per-call trace/compile of episode_accuracies "
        "dominates the JAX per-episode figure; a smoke check, not a measurement)",
        flush=True,
    )
  print(
      f"  classify only, pool embedded once (JAX): {classify['episodes_per_s']:,.0f} ep/s "
      f"per episode_accuracies call of {classify_episodes} episodes (its trace/compile "
      f"included: first batch of {classify['batch_episodes']} took "
      f"{statistics.median(classify['first_batch_seconds']):.2f} s); later batches "
      f"{classify['steady_episodes_per_s'] or float('nan'):,.0f} ep/s; embedding the "
      f"{len(pool)}-image pool once: {classify['pool_images_per_s']:.1f} img/s",
      flush=True,
  )
  if implant:
    print(
        f"  DC+IMP implanting (JAX only, no PyTorch peer): {implant['episodes_per_s']:.3g} "
        f"ep/s ({implant['seconds_per_episode']:.2f} s/episode; {implant['steps']} "
        f"{implant['optimizer']} steps, {implant['width']} channels in "
        f"{implant['layers']}, batch {implant['batch_episodes']}; first batch incl. "
        f"compile {implant['first_batch_seconds']:.1f} s)",
        flush=True,
    )
  return result


def print_table(results: dict) -> None:
  print(
      "\nepisodes/s (medians), 5-way 5-shot, 15 queries per class. per-episode: each "
      "episode embeds its 100 images, then classifies; classify-only: features embedded "
      "once, one episode_accuracies call (trace/compile included) and its later batches"
  )
  print(
      f"{'case':<20}{'per-ep JAX':>12}{'PyTorch':>10}{'JAX/PT':>8}"
      f"{'classify call':>15}{'later batches':>15}{'DC+IMP JAX':>12}"
  )
  for name, r in results.items():
    m, c = r["per_episode_embed"]["median_episodes_per_s"], r["classify_only_jax"]
    imp = r["implanting_jax"]
    print(
        f"{name:<20}{m['jax']:>12.3g}{m['torch']:>10.3g}"
        f"{r['per_episode_embed']['ratio_jax_over_torch']:>8.2f}"
        f"{c['episodes_per_s']:>15,.0f}{c['steady_episodes_per_s'] or float('nan'):>15,.0f}"
        f"{(format(imp['episodes_per_s'], '.3g') if imp else '-'):>12}"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--cases", default="all", help=f"comma-separated subset of {list(CASES)}, or 'all'"
  )
  parser.add_argument(
      "--episodes",
      type=int,
      default=None,
      help="per-episode figure: episodes per repeat (default: per case, "
      + ", ".join(f"{k} {c.episodes}" for k, c in CASES.items())
      + ")",
  )
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
      "--classify-episodes",
      type=int,
      default=None,
      help="classify-only figure: episodes per call " "(default config.eval.episodes)",
  )
  parser.add_argument(
      "--implant-episodes",
      type=int,
      default=None,
      help="implanting: episodes in all (default per case; at least two batches)",
  )
  parser.add_argument(
      "--implant-batch",
      type=int,
      default=None,
      help="implanting: episodes per vmapped call (default 1 on CPU, else the "
      "config's batch_episodes)",
  )
  parser.add_argument(
      "--implant-steps",
      type=int,
      default=None,
      help="implanting: override the config's 50 steps (--quick: 3)",
  )
  parser.add_argument("--no-implant", action="store_true")
  parser.add_argument(
      "--torch-python",
      default=None,
      help="interpreter with torch (default: $BENCH_TORCH_PYTHON, else this one)",
  )
  parser.add_argument("--torch-device", default="cpu", help="cpu or cuda")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  parser.add_argument("--quick", action="store_true", help="two tiny cases, a smoke check")
  args = parser.parse_args()

  sys.path.insert(0, ROOT)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.quick:
    cases, args.repeats = QUICK_CASES, 2
    args.classify_episodes = args.classify_episodes or 1000
    args.implant_steps = args.implant_steps or 3
  else:
    from train_speed import select_cases  # pylint: disable=import-outside-toplevel

    cases = select_cases(args.cases, CASES)
  os.makedirs(args.out, exist_ok=True)

  import jax  # pylint: disable=import-outside-toplevel
  from train_speed import TorchWorker, torch_python  # pylint: disable=import-outside-toplevel

  worker = TorchWorker(torch_python(args.torch_python), "torch_episodes.py")
  info = dict(
      platform=platform.platform(),
      cpus=os.cpu_count(),
      jax=jax.__version__,
      allocator=os.path.basename(os.environ.get("LD_PRELOAD", "")) or "system",
      jax_backend=jax.default_backend(),
      jax_device=str(jax.devices()[0].device_kind),
      torch_device=args.torch_device,
      loadavg_start=os.getloadavg(),
      repeats=args.repeats,
      quick=args.quick,
      pool=f"{POOL_CLASSES} classes x {POOL_PER_CLASS} random uint8 images",
  )
  print(
      f"JAX {jax.__version__} on {info['jax_backend']} ({info['jax_device']}), PyTorch on "
      f"{args.torch_device}; load average {info['loadavg_start']}",
      flush=True,
  )
  if (info["jax_backend"] == "cpu") != (args.torch_device == "cpu"):
    print(
        "  note: JAX and PyTorch run on different kinds of device; the ratio compares "
        "them as such.",
        flush=True,
    )
  start, results = time.perf_counter(), {}
  with tempfile.TemporaryDirectory() as workdir:
    for name, case in cases.items():
      results[name] = bench_case(name, case, worker, args, workdir)
      info.update(
          torch_threads=worker.call(cmd="time", episodes=0)["threads"],
          loadavg_end=os.getloadavg(),
          seconds=time.perf_counter() - start,
      )
      # Rewritten after every case, so an interrupted run keeps what it measured.
      with open(os.path.join(args.out, "episode_speed.json"), "w", encoding="utf-8") as f:
        json.dump(dict(info=info, cases=results), f, indent=1)
  worker.close()
  print_table(results)
  print(
      f"load average {info['loadavg_start']} at the start, {info['loadavg_end']} at the end; "
      f"PyTorch threads {info['torch_threads']}"
  )
  print(f"wrote {args.out}/episode_speed.json ({info['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
