"""Label propagation for deep semi-supervised learning (Iscen et al., CVPR 2019).

Given features of all N training images and the labels of a few, diffuse the
labels over the kNN graph of the features and turn the result into
pseudo-labels with certainty weights (ahmetius/LP-DeepSSL,
`DBSS.update_plabels`):

1. exact kNN by inner product of L2-normalised features (k = 50, self excluded);
2. affinities s^gamma on the kNN edges (gamma = 3), negatives clipped at 0 as
   the paper defines them (`clip_negative=False` keeps them, as the reference
   code does); W = A + A^T, no diagonal, D^-1/2 W D^-1/2 (`groundwork.knn_graph`);
3. solve (I - alpha W) Z = Y by conjugate gradient from 0, 20 iterations, every
   class at once but each with its own step sizes and scipy's stopping test
   (as the reference's one `scipy.sparse.linalg.cg` call per class, tol 1e-6);
   column c of Y is 1/|L_c| on the labeled images of class c;
4. Z clipped at 0, rows L1-normalised to z; pseudo-label argmax z; weight
   omega = 1 - H(z) / log C divided by its maximum; labeled images keep their
   label with omega = 1; class weight zeta_c = (N / C) / #{pseudo-label = c}.

Deviations from the reference code:
- an image with no affinity or no path to a label (Z row all 0) gets omega = 0,
  where the reference's entropy of a zero row makes every weight NaN; its
  pseudo-label is the argmax of zeros, class 0, counted in zeta as there;
- self is removed from the kNN lists by index, not by dropping column 0, which
  with exact duplicates can be another image (`groundwork.knn.drop_self`).

Steps 1-3 are groundwork's diffusion kernel (`groundwork.diffusion`, shared with retrieval
re-ranking and transductive few-shot inference); this module adds the DLP parts: seeds from
the labels, certainty and class weights, the weighted loss, and the checks named after
`config.lp`.

Everything from the features to the pseudo-labels runs on the device (the 'jax' kNN engine
keeps its output there; 'cpu' and 'faiss' search on the host): the kNN graph, then W and
the 20 CG steps and the weights as two compiled programs. W sits behind a graph operator
(`groundwork.knn_graph.GraphOps`): the pure-JAX COO graph by default, or, where the optional
`groundwork_cpu` package serves the CPU, its row graph, which gives the same W.

Settings are checked once by `check_settings` (the trainer's `check_config`, and again with
N once the data is read) and the labelled split once by `check_labels` where it is known;
`label_propagation` checks its settings (cheap Python values) and the features' finiteness
(one device reduction), not the labels.

Speed (N = 50,000, k = 50): see benchmarks/label_propagation.py and README.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from groundwork import diffusion
from groundwork import knn
from groundwork import knn_graph


class Propagation(NamedTuple):
  pseudo_labels: jax.Array  # [N] int32: argmax of z; the label itself for labeled images.
  weights: jax.Array  # [N] float32: certainty omega in [0, 1]; 1 for labeled images.
  class_weights: jax.Array  # [C] float32: zeta_c = (N / C) / #{pseudo_labels == c}.
  scores: jax.Array  # [N, C] float32: Z, the solution of (I - alpha W) Z = Y.


def label_propagation(
    features,
    labels,
    labeled_mask,
    num_classes: int,
    *,
    k: int = 50,
    gamma: float = 3.0,
    alpha: float = 0.99,
    cg_iterations: int = 20,
    clip_negative: bool = True,
    knn_engine: str = 'auto',
    cg_rtol: float = 1e-6,
    graph_ops: knn_graph.GraphOps | None = None,
) -> Propagation:
  """Pseudo-labels and weights for every image from `features [N, d]` (best on device).

  `labels [N]` is read only where `labeled_mask [N]` is true (elsewhere it may be -1); the
  split must pass `check_labels`, which the caller runs once where the split is known.
  `knn_engine`: a `groundwork.knn.ENGINES` name; `graph_ops`: W's operator (`knn_graph.graph_ops()`
  when None).
  """
  x = jnp.asarray(features, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f'features must be [N, d]; got shape {x.shape}.')
  check_settings(
      k=k,
      gamma=gamma,
      alpha=alpha,
      cg_iterations=cg_iterations,
      clip_negative=clip_negative,
      knn_engine=knn_engine,
      num_images=x.shape[0],
  )
  diffusion.check_finite(x)
  similarities, indices = knn.knn_search(x, k, engine=knn_engine)
  return propagate(
      similarities,
      indices,
      labels,
      labeled_mask,
      num_classes,
      gamma=gamma,
      alpha=alpha,
      cg_iterations=cg_iterations,
      clip_negative=clip_negative,
      cg_rtol=cg_rtol,
      graph_ops=graph_ops,
  )


def propagate(
    similarities,
    indices,
    labels,
    labeled_mask,
    num_classes: int,
    *,
    gamma: float = 3.0,
    alpha: float = 0.99,
    cg_iterations: int = 20,
    clip_negative: bool = True,
    cg_rtol: float = 1e-6,
    graph_ops: knn_graph.GraphOps | None = None,
) -> Propagation:
  """Steps 2-4 on a given kNN graph: `similarities`, `indices` `[N, k]` from `knn_search`,
  settings and labels already checked."""
  graph = diffusion.build_graph(
      similarities, indices, gamma=gamma, clip_negative=clip_negative, ops=graph_ops
  )
  return _diffuse(
      graph.data,
      jnp.asarray(labels, jnp.int32),
      jnp.asarray(labeled_mask, bool),
      ops=graph.ops,
      num_classes=int(num_classes),
      alpha=float(alpha),
      iterations=int(cg_iterations),
      rtol=float(cg_rtol),
  )


def weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, sample_weights: jax.Array, class_weights: jax.Array
) -> jax.Array:
  """`sum_i omega_i zeta_{y_i} CE(logits_i, y_i) / B`: the loss of stage 2.

  Divided by the batch size B, not by the sum of weights, as the reference
  (`helpers.train`); with omega = 1 on labeled and 0 on unlabeled images and
  zeta = 1 it is the reference's supervised loss of Mean Teacher (CE summed
  over labeled images / B).
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(log_probs, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
  weights = sample_weights.astype(jnp.float32) * class_weights.astype(jnp.float32)[targets]
  return jnp.sum(weights * ce) / logits.shape[0]


# ----------------------------------------------------------------------------
# Pieces of the propagation.
# ----------------------------------------------------------------------------
def certainty(z: jax.Array):
  """Pseudo-labels and omega from propagated scores `z [N, C]`, before labeled
  images are given their own labels.

  omega = 1 - H(z_hat) / log C with z_hat the clipped, L1-normalised row, divided
  by the largest omega; a row with nothing propagated gets omega = 0.
  """
  num_classes = z.shape[1]
  z = jnp.maximum(z, 0.0)
  total = z.sum(axis=1)
  reached = total > 0
  probs = z / jnp.where(reached, total, 1.0)[:, None]
  entropy = -jnp.sum(
      jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=1
  )
  omega = jnp.where(reached, 1.0 - entropy / np.log(num_classes), 0.0)
  top = jnp.max(omega)
  omega = omega / jnp.where(top > 0, top, 1.0)
  return jnp.argmax(probs, axis=1).astype(jnp.int32), omega


@functools.partial(jax.jit, static_argnames=('ops', 'num_classes', 'iterations'))
def _diffuse(
    graph, labels, labeled_mask, *, ops, num_classes, alpha, iterations, rtol
) -> Propagation:
  labels = jnp.where(labeled_mask, labels, 0)
  seeds = seed_matrix(labels, labeled_mask, num_classes)
  z = diffusion.solve(graph, seeds, ops=ops, alpha=alpha, iterations=iterations, rtol=rtol)
  pseudo, omega = certainty(z)
  pseudo = jnp.where(labeled_mask, labels, pseudo)
  omega = jnp.where(labeled_mask, 1.0, omega)
  counts = jnp.bincount(pseudo, length=num_classes)  # >= 1: every class has a labeled image.
  num_images = labels.shape[0]
  return Propagation(pseudo, omega, (num_images / num_classes) / counts.astype(jnp.float32), z)


def seed_matrix(labels: jax.Array, labeled_mask: jax.Array, num_classes: int) -> jax.Array:
  """Y [N, C]: column c is 1 / |L_c| on the labeled images of class c."""
  member = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * labeled_mask[:, None]
  counts = member.sum(axis=0)
  return member / jnp.where(counts > 0, counts, 1.0)


# ----------------------------------------------------------------------------
# Checks: settings and labels once per run.
# ----------------------------------------------------------------------------
def check_settings(**settings) -> None:
  """`groundwork.diffusion.check_settings` naming the `config.lp` fields: `k`, `gamma`,
  `alpha`, `cg_iterations`, `clip_negative`, `knn_engine` and, once known, `num_images`."""
  diffusion.check_settings(config_path='config.lp', **settings)


def check_labels(labels, labeled_mask, num_classes: int) -> None:
  """A ValueError unless every class has a labeled image and every label is in range."""
  labels, labeled_mask = np.asarray(labels), np.asarray(labeled_mask, bool)
  n = labels.shape[0] if labels.ndim else 0
  if labels.shape != (n,) or labeled_mask.shape != (n,):
    raise ValueError(
        f'labels {labels.shape} and labeled_mask {labeled_mask.shape} must both '
        'be [N]: one entry per image.'
    )
  if num_classes < 2:
    raise ValueError(f'num_classes={num_classes}: propagation needs at least 2 classes.')
  given = labels[labeled_mask]
  if given.size and (given.min() < 0 or given.max() >= num_classes):
    wrong = given[(given < 0) | (given >= num_classes)]
    raise ValueError(
        f'labeled images carry label {wrong[0]}, outside [0, {num_classes - 1}] '
        f'for num_classes={num_classes}.'
    )
  counts = np.bincount(given.astype(np.int64), minlength=num_classes)
  if (counts == 0).any():
    missing = np.flatnonzero(counts == 0)
    raise ValueError(
        f'class {missing[0]} has no labeled image ({missing.size} of {num_classes} '
        f'classes have none: {missing[:10].tolist()}); every class needs at least '
        'one label to propagate from.'
    )
