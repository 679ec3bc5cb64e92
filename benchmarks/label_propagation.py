"""Label propagation: this project's JAX step against a CPU replica of the reference.

The replica follows ahmetius/LP-DeepSSL `DBSS.update_plabels` step by step, on
CPU: faiss `IndexFlatIP` kNN (k + 1, first column dropped), `D ** 3` without
clipping, a scipy.sparse graph W + W^T, `normalize_connection_graph`, one
`scipy.sparse.linalg.cg` per class (tol 1e-6, 20 iterations; scipy >= 1.12
calls it rtol), the per-class ranks `cg_diffusion` computes, negatives set to 0, L1 rows,
`scipy.stats.entropy` weights, argmax, labeled overrides and per-class weights.

Both run on the same random-but-clustered features (unit-norm class centres
plus Gaussian noise of norm `--noise`, shuffled), with a balanced labeled
subset; ours start on the device, as in training. Each part is timed `--repeats` times,
reference and ours alternating, each after `--pause` seconds of rest (as
benchmarks/train_speed.py: the side that ran last leaves worker threads spinning), and the
best run counts (the JAX programs are compiled once per shape, as in training, where every
epoch has the same N, k and C; the first call, compile included, is reported apart). Our
graph operator is `--graph` (groundwork.knn_graph.graph_ops: 'coo', the pure-JAX default, or 'rows',
the groundwork_cpu package's); its build (affinities included) and one product W @ p are
also timed on their own. Pseudo-label agreement is over all images; the two may differ
only at near-ties (float32 here, float64 in scipy's CG). The load average before and after
each setting is recorded with the figures.

  python benchmarks/label_propagation.py --out /tmp/lp_benchmark.json --repeats 5 --graph coo
"""

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import faiss  # noqa: E402  pylint: disable=wrong-import-position
import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import scipy.sparse  # noqa: E402  pylint: disable=wrong-import-position
import scipy.sparse.linalg  # noqa: E402  pylint: disable=wrong-import-position
import scipy.stats  # noqa: E402  pylint: disable=wrong-import-position

from groundwork import diffusion  # noqa: E402  pylint: disable=wrong-import-position
from groundwork import knn  # noqa: E402  pylint: disable=wrong-import-position
from groundwork import knn_graph  # noqa: E402  pylint: disable=wrong-import-position
from semisup import label_propagation as lp  # noqa: E402  pylint: disable=wrong-import-position

SETTINGS = ({'d': 128, 'classes': 10, 'labels': 4000}, {'d': 512, 'classes': 100, 'labels': 10000})


def clustered_features(n, d, classes, noise, seed):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, d)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
  features = centres[labels] + noise / np.sqrt(d) * rng.standard_normal((n, d)).astype(np.float32)
  return features.astype(np.float32), labels


def balanced_labeled(labels, num_labeled, classes, seed):
  rng = np.random.default_rng(seed + 1)
  per_class = min(num_labeled // classes, int(np.bincount(labels).min()))
  picked = [
      rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(classes)
  ]
  mask = np.zeros(labels.shape[0], bool)
  mask[np.concatenate(picked)] = True
  return mask


# ----------------------------------------------------------------------------
# The reference step (LP-DeepSSL update_plabels), on CPU.
# ----------------------------------------------------------------------------
def reference_knn(features, k):
  x = features.copy()
  faiss.normalize_L2(x)
  index = faiss.IndexFlatIP(x.shape[1])
  index.add(x)
  return index.search(x, k + 1)


def reference_graph_and_diffusion(
    sims, idx, labels, labeled_mask, classes, k, alpha=0.99, max_iter=20
):
  n = idx.shape[0]
  labeled_idx = np.flatnonzero(labeled_mask)
  d = sims[:, 1:] ** 3
  i = idx[:, 1:]
  row_idx_rep = np.tile(np.arange(n), (k, 1)).T
  w = scipy.sparse.csr_matrix(
      (d.flatten('F'), (row_idx_rep.flatten('F'), i.flatten('F'))), shape=(n, n)
  )
  w = w + w.T
  # normalize_connection_graph
  w = scipy.sparse.csr_matrix(w)
  w = w - scipy.sparse.diags(w.diagonal())
  with np.errstate(divide='ignore', invalid='ignore'):
    deg = np.array(1.0 / np.sqrt(w.sum(axis=1)))
  deg[np.isnan(deg)] = 0
  deg[np.isinf(deg)] = 0
  d_mh = scipy.sparse.diags(deg.reshape(-1))
  wn = d_mh * w * d_mh
  qsim = np.zeros((classes, n))
  for c in range(classes):
    cur = labeled_idx[labels[labeled_idx] == c]
    qsim[c, cur] = 1.0 / cur.shape[0]
  # cg_diffusion
  wnn = scipy.sparse.eye(wn.shape[0]) - alpha * wn
  out = []
  for c in range(classes):
    f, _ = scipy.sparse.linalg.cg(wnn, qsim[c, :], rtol=1e-6, maxiter=max_iter)
    out.append(f.reshape(-1, 1))
  cg_sims = np.concatenate(out, axis=1)
  np.argsort(-cg_sims, axis=0)  # cg_diffusion also returns these ranks (unused by the caller).
  cg_sims[cg_sims < 0] = 0
  # torch.nn.functional.normalize(p=1, dim=1)
  probs = cg_sims / np.maximum(np.abs(cg_sims).sum(axis=1, keepdims=True), 1e-12)
  probs[probs < 0] = 0
  with np.errstate(divide='ignore', invalid='ignore'):
    entropy = scipy.stats.entropy(probs.T)
  weights = 1 - entropy / np.log(classes)
  weights = weights / np.max(weights)
  p_labels = np.argmax(probs, 1)
  p_labels[labeled_idx] = labels[labeled_idx]
  weights[labeled_idx] = 1.0
  class_weights = np.ones(classes, np.float32)
  for c in range(classes):
    class_weights[c] = (float(n) / classes) / np.flatnonzero(p_labels == c).size
  return p_labels, weights, class_weights


# ----------------------------------------------------------------------------
# Timing.
# ----------------------------------------------------------------------------
def best_of(repeats, fn, *args):
  """Best wall time of `repeats` calls after one untimed call (compilation)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def run_setting(n, k, d, classes, num_labeled, noise, repeats, seed, knn_engine, graph, pause):
  load_before = os.getloadavg()
  features, labels = clustered_features(n, d, classes, noise, seed)
  mask = balanced_labeled(labels, num_labeled, classes, seed)
  unlabeled = ~mask
  ops = knn_graph.graph_ops(graph)
  on_device = jnp.asarray(features)
  known, labeled = jnp.asarray(np.where(mask, labels, -1)), jnp.asarray(mask)

  start = time.perf_counter()
  jax.block_until_ready(
      lp.label_propagation(
          on_device, known, labeled, classes, k=k, knn_engine=knn_engine, graph_ops=ops
      )
  )
  first_call = time.perf_counter() - start
  # Each part alternates reference and ours, so load from elsewhere hits both alike.
  times = {key: [] for key in ('ref_knn', 'knn', 'ref_gd', 'gd')}
  for _ in range(repeats):
    for key, fn in (
        ('ref_knn', lambda: reference_knn(features, k)),
        ('knn', lambda: knn.knn_search(on_device, k, engine=knn_engine)),
    ):
      time.sleep(pause)
      start = time.perf_counter()
      out = jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - start)
      if key == 'ref_knn':
        ref_sims, ref_idx = out
      else:
        sims, idx = out
    for key, fn in (
        (
            'ref_gd',
            lambda: reference_graph_and_diffusion(ref_sims, ref_idx, labels, mask, classes, k),
        ),
        ('gd', lambda: lp.propagate(sims, idx, known, labeled, classes, graph_ops=ops)),
    ):
      time.sleep(pause)
      start = time.perf_counter()
      out = jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - start)
      if key == 'ref_gd':
        ref = out
      else:
        ours = out
  best = {key: min(value) for key, value in times.items()}

  # The operator on its own: W from the kNN lists (s^3 included), and one W @ p.
  build = jax.jit(lambda s, i: ops.build(diffusion.affinities(s, 3.0, True), i))
  w = build(jnp.asarray(sims), jnp.asarray(idx))
  p = jax.random.normal(jax.random.key(seed), (n, classes), jnp.float32)
  time.sleep(pause)
  build_s = best_of(repeats, build, jnp.asarray(sims), jnp.asarray(idx))
  time.sleep(pause)
  matvec_s = best_of(max(repeats, 10), jax.jit(ops.matvec), w, p)

  pseudo = np.asarray(ours.pseudo_labels)
  truth = labels[unlabeled]
  return {
      'n': n,
      'k': k,
      'd': d,
      'classes': classes,
      'labels': num_labeled,
      'noise': noise,
      'knn_engine': knn.resolve(knn_engine),
      'graph': 'coo' if ops is knn_graph.COO else ops.build.__module__,
      'repeats': repeats,
      'load_average_before': load_before,
      'load_average_after': os.getloadavg(),
      'all_times_s': times,
      'reference_s': {
          'knn': best['ref_knn'],
          'graph_diffusion': best['ref_gd'],
          'end_to_end': best['ref_knn'] + best['ref_gd'],
      },
      # End to end = best kNN + best graph/diffusion on both sides.
      'ours_s': {
          'knn': best['knn'],
          'graph_diffusion': best['gd'],
          'end_to_end': best['knn'] + best['gd'],
          'graph_build': build_s,
          'one_matvec': matvec_s,
          'first_call_with_compile': first_call,
      },
      'speedup': {
          'knn': best['ref_knn'] / best['knn'],
          'graph_diffusion': best['ref_gd'] / best['gd'],
          'end_to_end': (best['ref_knn'] + best['ref_gd']) / (best['knn'] + best['gd']),
      },
      'pseudo_label_agreement': float(np.mean(pseudo == ref[0])),
      'pseudo_label_accuracy': {
          'ours': float(np.mean(pseudo[unlabeled] == truth)),
          'reference': float(np.mean(ref[0][unlabeled] == truth)),
      },
      'max_abs_weight_difference': float(np.max(np.abs(np.asarray(ours.weights) - ref[1]))),
      'max_rel_class_weight_difference': float(
          np.max(np.abs(np.asarray(ours.class_weights) - ref[2]) / ref[2])
      ),
      'knn_agreement_vs_reference': float(
          np.mean(np.sort(np.asarray(idx), axis=1) == np.sort(ref_idx[:, 1:], axis=1))
      ),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='where to write the JSON of all figures')
  parser.add_argument('--n', type=int, default=50_000)
  parser.add_argument('--k', type=int, default=50)
  parser.add_argument(
      '--noise', type=float, default=4.0, help='noise norm relative to the unit class centres'
  )
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--knn-engine', default='auto', choices=knn.ENGINES)
  parser.add_argument(
      '--graph',
      default='auto',
      choices=knn_graph.KINDS,
      help="W's operator: 'coo' (pure JAX), 'rows' (the groundwork_cpu "
      "package's), 'auto' (rows where the package serves, else coo)",
  )
  parser.add_argument('--settings', default='0,1', help='indices into SETTINGS to run')
  parser.add_argument(
      '--pause',
      type=float,
      default=0.5,
      help='seconds of rest before each timed part, for the worker threads the '
      'other side left spinning to stop (numpy BLAS after the reference: '
      '+50 ms on our graph and diffusion without it)',
  )
  args = parser.parse_args(argv)

  results = []
  for i in (int(s) for s in args.settings.split(',')):
    s = SETTINGS[i]
    r = run_setting(
        args.n,
        args.k,
        s['d'],
        s['classes'],
        s['labels'],
        args.noise,
        args.repeats,
        args.seed,
        args.knn_engine,
        args.graph,
        args.pause,
    )
    results.append(r)
    ref, ours, up = r['reference_s'], r['ours_s'], r['speedup']
    print(
        f"N={r['n']} d={r['d']} C={r['classes']} labels={r['labels']} "
        f"(kNN engine {r['knn_engine']}, graph {r['graph']}, {jax.default_backend()}; "
        f"load {r['load_average_before'][0]:.2f} -> {r['load_average_after'][0]:.2f})"
    )
    for part in ('knn', 'graph_diffusion', 'end_to_end'):
      print(
          f'  {part:16s} reference {ref[part]:7.3f} s   ours {ours[part]:7.3f} s   '
          f'x{up[part]:.2f}'
      )
    print(
        f"  graph build {1e3 * ours['graph_build']:.1f} ms, one W @ p "
        f"{1e3 * ours['one_matvec']:.1f} ms; "
        f"first call incl. compile {ours['first_call_with_compile']:.2f} s; "
        f"pseudo-label agreement {r['pseudo_label_agreement']:.5f}; accuracy ours "
        f"{r['pseudo_label_accuracy']['ours']:.4f} reference "
        f"{r['pseudo_label_accuracy']['reference']:.4f}; max |weight diff| "
        f"{r['max_abs_weight_difference']:.2e}",
        flush=True,
    )
  with open(args.out, 'w') as f:
    json.dump(
        {
            'machine': {
                'cpus': os.cpu_count(),
                'jax_backend': jax.default_backend(),
                'jax': jax.__version__,
                'faiss': faiss.__version__,
            },
            'results': results,
        },
        f,
        indent=1,
    )
  print(f'wrote {args.out}')
  return results


if __name__ == '__main__':
  sys.exit(0 if main() else 1)
