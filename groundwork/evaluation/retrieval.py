"""Retrieval metrics of embeddings, as metric-learning papers report them.

Every image is a query against all the others (leave-one-out: the query is never retrieved),
as Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020) and pytorch-metric-learning's
`AccuracyCalculator` with embeddings from the same source:

- P@1: whether the first item retrieved is of the query's class;
- R@K (K = 1, 2, 4, 8): whether any of the first K is (the Recall@K of Song et al., 2016);
- R-Precision: the share of the query's class among the first R, R = the other members of
  the query's class;
- MAP@R: (1/R) sum_{i <= R} P(i) rel(i), P(i) the precision at i, rel(i) whether item i is of
  the query's class;
- NMI: normalised mutual information of the labels and k-means over the embeddings (as many
  clusters as classes, scikit-learn's k-means++ seeded from an argument; arithmetic mean).

A query alone in its class (R = 0) has nothing to retrieve and is left out of every metric
but NMI, as pytorch-metric-learning's "lone queries" (which would report 0 when all are lone;
here that is an error). Each metric is the plain mean over the queries counted.

Rankings are by the inner product of L2-normalised embeddings (the Euclidean ranking of the
normalised embeddings), or by diffusion on the database's kNN graph (Iscen et al., CVPR 2017;
`groundwork.diffusion`), each query seeded with its nearest database items. Equal scores come
in the order the ranking gives: lower index first for exact searches of under 64 x depth rows
and for diffusion scores.
"""

import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from groundwork import diffusion
from groundwork import knn

RECALL_AT = (1, 2, 4, 8)
RANKINGS = ('euclidean', 'diffusion')
# Table headings of `ranking_metrics`' names, in table order.
SHORT_NAMES = {
    'precision_at_1': 'P@1',
    **{f'recall_at_{k}': f'R@{k}' for k in RECALL_AT},
    'r_precision': 'R-Prec',
    'map_at_r': 'MAP@R',
}


# ----------------------------------------------------------------------------
# Metrics of ranked lists.
# ----------------------------------------------------------------------------
def other_members(labels) -> np.ndarray:
  """R of every item `[N]`: how many other items share its label."""
  labels = np.asarray(labels)
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  return counts[inverse.ravel()] - 1


def _matches(ranked_labels, query_labels, relevant):
  """`[Q', depth]` bool: item i of a counted query is of its class; and the counted R `[Q']`."""
  ranked_labels, query_labels = jnp.asarray(ranked_labels), jnp.asarray(query_labels)
  relevant = np.asarray(relevant)
  if ranked_labels.ndim != 2 or query_labels.shape != ranked_labels.shape[:1]:
    raise ValueError(
        f'ranked_labels must be [Q, depth] and query_labels [Q]; got {ranked_labels.shape} '
        f'and {query_labels.shape}.'
    )
  if relevant.shape != query_labels.shape:
    raise ValueError(f'relevant must be [Q] = {query_labels.shape}; got {relevant.shape}.')
  counted = relevant > 0
  if not counted.any():
    raise ValueError(
        'no query has another item of its class (every R is 0): retrieval metrics need '
        'at least one class with two members.'
    )
  match = ranked_labels[counted] == query_labels[counted][:, None]
  return match, jnp.asarray(relevant[counted])


def precision_at_1(ranked_labels, query_labels, relevant) -> float:
  """Mean over queries with R > 0 of whether the first item is of the query's class.

  `ranked_labels [Q, depth]`: labels of each query's retrieved items, best first, the query
  itself excluded; `query_labels [Q]`; `relevant [Q]`: R (`other_members`)."""
  match, _ = _matches(ranked_labels, query_labels, relevant)
  return float(jnp.mean(match[:, 0]))


def recall_at_k(ranked_labels, query_labels, relevant, k: int) -> float:
  """Mean over queries with R > 0 of whether any of the first `k` items is of their class."""
  match, _ = _matches(ranked_labels, query_labels, relevant)
  if not 1 <= k <= match.shape[1]:
    raise ValueError(f'R@{k} needs k in [1, depth = {match.shape[1]}] ranked items per query.')
  return float(jnp.mean(jnp.any(match[:, :k], axis=1)))


def r_precision(ranked_labels, query_labels, relevant) -> float:
  """Mean over queries with R > 0 of the share of their class among their first R items."""
  match, r = _matches(ranked_labels, query_labels, relevant)
  within = _within_r(match, r)
  return float(jnp.mean(jnp.sum(match & within, axis=1) / r))


def map_at_r(ranked_labels, query_labels, relevant) -> float:
  """Mean over queries with R > 0 of (1/R) sum_{i <= R} P(i) rel(i)."""
  match, r = _matches(ranked_labels, query_labels, relevant)
  hits = match & _within_r(match, r)
  precision = jnp.cumsum(hits, axis=1) / jnp.arange(1, match.shape[1] + 1)
  return float(jnp.mean(jnp.sum(jnp.where(hits, precision, 0.0), axis=1) / r))


def _within_r(match, r):
  depth = match.shape[1]
  if int(jnp.max(r)) > depth:
    raise ValueError(
        f'a query has R = {int(jnp.max(r))} other members of its class but only {depth} '
        'items were ranked: rank at least max R (`other_members(labels).max()`).'
    )
  return jnp.arange(depth)[None, :] < r[:, None]


def nmi(features, labels, seed: int) -> float:
  """NMI of `labels [N]` and k-means (as many clusters as labels, `seed`) over the
  L2-normalised `features [N, d]`."""
  labels = np.asarray(labels)
  clusters = len(np.unique(labels))
  x = np.asarray(knn.l2_normalize(features), np.float64)
  assigned = KMeans(n_clusters=clusters, random_state=seed, n_init='auto').fit_predict(x)
  return float(normalized_mutual_info_score(labels, assigned))


def ranking_metrics(ranked, labels) -> dict:
  """P@1, R@K for the K in RECALL_AT up to depth, R-Precision and MAP@R of leave-one-out
  rankings `ranked [N, depth]` (database indices) of items labelled `labels [N]`."""
  labels = jnp.asarray(labels)
  ranked_labels = labels[jnp.asarray(ranked)]
  relevant = other_members(labels)
  metrics = {'precision_at_1': precision_at_1(ranked_labels, labels, relevant)}
  for k in (k for k in RECALL_AT if k <= ranked_labels.shape[1]):
    metrics[f'recall_at_{k}'] = recall_at_k(ranked_labels, labels, relevant, k)
  metrics['r_precision'] = r_precision(ranked_labels, labels, relevant)
  metrics['map_at_r'] = map_at_r(ranked_labels, labels, relevant)
  return metrics


# ----------------------------------------------------------------------------
# Rankings and the report.
# ----------------------------------------------------------------------------
def check_settings(
    *,
    config_path: str,
    k: int,
    query_k: int,
    gamma: float,
    alpha: float,
    cg_iterations: int,
    mutual: bool = True,
    num_images: int | None = None,
) -> None:
  """A ValueError naming the field under `config_path` for a re-ranking setting out of range;
  with `num_images`, also k < N."""
  if not isinstance(mutual, bool):
    raise ValueError(f'{config_path}.mutual={mutual!r} must be True or False.')
  diffusion.check_settings(
      config_path=config_path,
      k=k,
      gamma=gamma,
      alpha=alpha,
      cg_iterations=cg_iterations,
      num_images=num_images,
  )
  if query_k != int(query_k) or not 1 <= query_k <= k:
    raise ValueError(
        f'{config_path}.query_k={query_k} must be an integer in [1, {config_path}.k = {k}]: '
        "a query's seeds are among its k nearest."
    )


def rankings(
    features,
    depth: int,
    *,
    k: int = 50,
    query_k: int = 10,
    gamma: float = 3.0,
    alpha: float = 0.99,
    cg_iterations: int = 20,
    mutual: bool = True,
    knn_engine: str = 'auto',
) -> dict:
  """`{'euclidean': [N, depth], 'diffusion': [N, depth]}`: each item's `depth` best other
  items by similarity, and by diffusion over the kNN graph of all items (k neighbours,
  `mutual` neighbours only as the paper's code, affinities s^gamma) seeded with its `query_k`
  nearest. One kNN search serves both."""
  x = jnp.asarray(features, jnp.float32)
  n = x.shape[0]
  if not 1 <= depth < n:
    raise ValueError(f'depth={depth} must lie in [1, N-1] = [1, {n - 1}].')
  diffusion.check_finite(x)
  similarities, indices = knn.knn_search(x, max(depth, k), engine=knn_engine)
  similarities, indices = jnp.asarray(similarities), jnp.asarray(indices)
  graph = diffusion.build_graph(
      similarities[:, :k], indices[:, :k], gamma=gamma, clip_negative=True, mutual=mutual
  )
  _, diffused = diffusion.diffusion_ranking(
      graph,
      similarities[:, :query_k],
      indices[:, :query_k],
      depth,
      exclude=jnp.arange(n, dtype=jnp.int32),
      gamma=gamma,
      alpha=alpha,
      iterations=cg_iterations,
  )
  return {'euclidean': indices[:, :depth], 'diffusion': diffused}


def retrieval_report(
    features,
    labels,
    *,
    seed: int,
    k: int = 50,
    query_k: int = 10,
    gamma: float = 3.0,
    alpha: float = 0.99,
    cg_iterations: int = 20,
    mutual: bool = True,
    knn_engine: str = 'auto',
) -> dict:
  """Every metric of both rankings and NMI, as one flat dict of floats for results.json and
  TensorBoard: `{ranking}_{metric}` for ranking in RANKINGS, plus `nmi` and `queries` (the
  items with R > 0). Settings as `rankings`; `seed` seeds k-means."""
  labels = np.asarray(labels)
  relevant = other_members(labels)
  depth = max(int(relevant.max()), max(RECALL_AT))
  ranked = rankings(
      features,
      min(depth, len(labels) - 1),
      k=k,
      query_k=query_k,
      gamma=gamma,
      alpha=alpha,
      cg_iterations=cg_iterations,
      mutual=mutual,
      knn_engine=knn_engine,
  )
  report = {}
  for name in RANKINGS:
    for metric, value in ranking_metrics(ranked[name], labels).items():
      report[f'{name}_{metric}'] = value
  report['nmi'] = nmi(features, labels, seed)
  report['queries'] = int(np.sum(relevant > 0))
  return report


def print_report(report: dict) -> None:
  """`retrieval_report`'s metrics as a table, one row per ranking (percentages)."""
  metrics = [m for m in SHORT_NAMES if f'euclidean_{m}' in report]
  print(f'Retrieval, {report["queries"]} queries; NMI of k-means {100 * report["nmi"]:.2f}%')
  print(f'{"ranking":<10}' + ''.join(f'{SHORT_NAMES[m]:>8}' for m in metrics))
  for name in RANKINGS:
    print(f'{name:<10}' + ''.join(f'{100 * report[f"{name}_{m}"]:>8.2f}' for m in metrics))
