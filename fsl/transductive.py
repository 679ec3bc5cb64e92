"""Transductive few-shot inference: label propagation inside each episode.

The queries of an episode are classified together rather than one by one (TPN, Liu et al.,
ICLR 2019; local propagation, Lifchitz et al., 2021): the support and query features are the
nodes of one kNN graph, the support labels are diffused over it, and each query takes the
class its node received most of. The graph and the solve are groundwork's diffusion kernel
(`groundwork.diffusion`, the one of semi-supervised label propagation):

- nodes: 'pooled', one per image (its pooled feature); 'dense', one per position of each
  image's feature map (DC's per-position features), a query image then scored by the sum over
  its positions;
- kNN by inner product of L2-normalised nodes (k), affinities s^gamma with negatives at 0,
  W = D^-1/2 (A + A^T) D^-1/2 without diagonal, on the pure-JAX COO operator (vmapped over
  episodes);
- Y: one column per class, 1 on every node of a support image of that class;
- Z = (I - alpha W)^-1 Y by conjugate gradient (cg_iterations steps, tolerance 1e-6);
- `class_mass`: each class's scores divided by their total over the queries (class mass
  normalisation, Zhu, Ghahramani & Lafferty, ICML 2003; the episode's classes are balanced).
  As alpha nears 1, Z tends to the graph's stationary part, the same for every query and
  largest for the class whose support has the largest degree; an episode's small graph mixes
  within the 20 steps, so without it most queries go to one class.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from groundwork import diffusion
from groundwork import knn
from groundwork import knn_graph

MODES = ('none', 'pooled', 'dense')


class Propagation(NamedTuple):
  """Settings of the propagation in an episode (`config.eval.propagation`); hashable, so a
  static argument of `jax.jit`."""

  k: int = 10
  gamma: float = 3.0
  alpha: float = 0.95
  cg_iterations: int = 20
  class_mass: bool = True


def propagation_scores(
    support: jax.Array,
    query: jax.Array,
    support_labels: jax.Array,
    n_way: int,
    settings: Propagation,
) -> jax.Array:
  """Scores `[Q, n_way]` of the query images from Z, traceable and vmappable.

  `support [S, P, C]`, `query [Q, P, C]`: P nodes per image (1 for pooled features, h * w
  positions for feature maps); `support_labels [S]` in 0..n_way-1.
  """
  num_support, positions, channels = support.shape
  nodes = jnp.concatenate([support, query]).reshape(-1, channels)
  similarities, indices = knn.knn_in_memory(nodes, settings.k)
  graph = knn_graph.COO.build(diffusion.affinities(similarities, settings.gamma, True), indices)
  seeds = jnp.repeat(jax.nn.one_hot(support_labels, n_way, dtype=jnp.float32), positions, axis=0)
  seeds = jnp.pad(seeds, ((0, nodes.shape[0] - seeds.shape[0]), (0, 0)))
  z = diffusion.solve(
      graph,
      seeds,
      ops=knn_graph.COO,
      alpha=settings.alpha,
      iterations=settings.cg_iterations,
      rtol=1e-6,
  )
  scores = z[num_support * positions :].reshape(query.shape[0], positions, n_way).sum(axis=1)
  if settings.class_mass:
    mass = jnp.maximum(scores, 0.0).sum(axis=0, keepdims=True)
    scores = scores / jnp.where(mass > 0, mass, 1.0)
  return scores


def check_settings(
    mode: str, settings: Propagation, smallest_graph: int, config_path: str = 'config.eval'
) -> None:
  """A ValueError naming the field for a mode or setting out of range; `smallest_graph`: the
  fewest nodes of any graph to be built (support + queries, times positions for 'dense')."""
  if mode not in MODES:
    raise ValueError(f'{config_path}.transductive={mode!r} is not one of {list(MODES)}.')
  if mode == 'none':
    return
  diffusion.check_settings(
      config_path=f'{config_path}.propagation',
      k=settings.k,
      gamma=settings.gamma,
      alpha=settings.alpha,
      cg_iterations=settings.cg_iterations,
  )
  if settings.k >= smallest_graph:
    raise ValueError(
        f'{config_path}.propagation.k={settings.k} must be smaller than the {smallest_graph} '
        f'nodes of the smallest episode graph ({config_path}.transductive={mode!r}): lower it '
        'to at most that minus one.'
    )
