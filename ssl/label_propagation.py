"""Label propagation for deep semi-supervised learning (Iscen et al., CVPR 2019).

Given features of all N training images and the labels of a few, diffuse the
labels over the kNN graph of the features and turn the result into
pseudo-labels with certainty weights (ahmetius/LP-DeepSSL,
`DBSS.update_plabels`):

1. exact kNN by inner product of L2-normalised features (k = 50, self excluded);
2. affinities s^gamma on the kNN edges (gamma = 3), negatives clipped at 0 as
   the paper defines them (`clip_negative=False` keeps them, as the reference
   code does); W = A + A^T, no diagonal, D^-1/2 W D^-1/2 (`knn_graph.py`);
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
  with exact duplicates can be another image (`knn.drop_self`).

Everything from the features to the pseudo-labels runs on the device (the 'jax' kNN engine
keeps its output there; 'cpu' and 'faiss' search on the host): the kNN graph, then W and
the 20 CG steps and the weights as two compiled programs. W sits behind a graph operator
(`knn_graph.GraphOps`): the pure-JAX COO graph by default, or, where the optional
`groundwork_cpu` package serves the CPU, its row graph, which gives the same W.

Settings are checked once by `check_settings` (the trainer's `check_config`, and again with
N once the data is read) and the labelled split once by `check_labels` where it is known;
`label_propagation` checks its settings (cheap Python values) and the features' finiteness
(one device reduction), not the labels.

Speed (N = 50,000, k = 50): see benchmarks/label_propagation.py and README.
"""

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from semisup import knn
from semisup import knn_graph

# Above this share of the images as neighbours, the kNN graph stops being local.
LARGE_K_SHARE = 0.1


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
  `knn_engine`: a `knn.ENGINES` name; `graph_ops`: W's operator (`knn_graph.graph_ops()`
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
  _check_finite(x)
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
  ops = knn_graph.graph_ops() if graph_ops is None else graph_ops
  # Two compiled programs: W's arrays (tens of MB) come back as outputs, which the allocator
  # keeps for the next call; as temporaries inside one program they were mapped afresh on
  # every call (cpu_kernels/NOTES.md).
  graph = _graph(
      jnp.asarray(similarities, jnp.float32),
      jnp.asarray(indices, jnp.int32),
      ops=ops,
      gamma=float(gamma),
      clip_negative=bool(clip_negative),
  )
  return _diffuse(
      graph,
      jnp.asarray(labels, jnp.int32),
      jnp.asarray(labeled_mask, bool),
      ops=ops,
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
# Conjugate gradient, one independent solve per column.
# ----------------------------------------------------------------------------
def conjugate_gradient(matvec, b: jax.Array, iterations: int, rtol: float = 1e-6) -> jax.Array:
  """Solve `A X = B` for symmetric positive definite A, each column on its own.

  Starts from 0 and stops a column once `||r|| < rtol ||b||` (scipy's test),
  else after `iterations` steps: column c follows `scipy.sparse.linalg.cg(A,
  b[:, c], rtol=rtol, maxiter=iterations)` step for step. The loop ends when
  every column has stopped.
  """
  b = jnp.asarray(b, jnp.float32)
  column_dot = lambda u, v: jnp.sum(u * v, axis=0)
  tolerance = rtol * jnp.sqrt(column_dot(b, b))
  going = lambda rho: (jnp.sqrt(rho) >= tolerance) & (rho > 0)

  def step(state):
    i, x, r, p, rho, active = state
    q = matvec(p)
    step_size = jnp.where(active, rho / jnp.where(active, column_dot(p, q), 1.0), 0.0)
    x = x + step_size * p
    r = r - step_size * q
    rho_next = column_dot(r, r)
    p = jnp.where(active, r + rho_next / jnp.where(active, rho, 1.0) * p, p)
    rho = jnp.where(active, rho_next, rho)
    return i + 1, x, r, p, rho, active & going(rho)

  rho = column_dot(b, b)
  state = (0, jnp.zeros_like(b), b, b, rho, going(rho))
  return jax.lax.while_loop(lambda s: (s[0] < iterations) & jnp.any(s[-1]), step, state)[1]


# ----------------------------------------------------------------------------
# Pieces of the propagation.
# ----------------------------------------------------------------------------
def affinities(similarities: jax.Array, gamma: float, clip_negative: bool) -> jax.Array:
  """`s^gamma` on the kNN edges; negatives clipped at 0 first if `clip_negative`.

  Unclipped, an odd integer gamma keeps a negative similarity negative, as the
  reference's `D ** 3`.
  """
  s = jnp.asarray(similarities, jnp.float32)
  if clip_negative:
    return jnp.maximum(s, 0.0) ** gamma
  return jax.lax.integer_pow(s, int(gamma))


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


@functools.partial(jax.jit, static_argnames=('ops', 'gamma', 'clip_negative'))
def _graph(similarities, indices, *, ops, gamma, clip_negative):
  return ops.build(affinities(similarities, gamma, clip_negative), indices)


@functools.partial(jax.jit, static_argnames=('ops', 'num_classes', 'iterations'))
def _diffuse(
    graph, labels, labeled_mask, *, ops, num_classes, alpha, iterations, rtol
) -> Propagation:
  labels = jnp.where(labeled_mask, labels, 0)
  seeds = seed_matrix(labels, labeled_mask, num_classes)
  z = conjugate_gradient(lambda p: p - alpha * ops.matvec(graph, p), seeds, iterations, rtol)
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
# Checks: settings and labels once per run, features on every call.
# ----------------------------------------------------------------------------
def check_settings(
    *,
    k: int,
    gamma: float,
    alpha: float,
    cg_iterations: int,
    clip_negative: bool,
    knn_engine: str = 'auto',
    num_images: int | None = None,
) -> None:
  """A ValueError naming the `config.lp` field and its allowed range for a setting outside it.

  With `num_images` (N, known once the data is read) also k < N, and a warning when k is
  more than LARGE_K_SHARE of N.
  """
  if k != int(k) or k < 1:
    raise ValueError(
        f'config.lp.k={k} must be an integer in [1, N-1] (N: the images '
        'propagated over; an image is never its own neighbour).'
    )
  if num_images is not None:
    if k >= num_images:
      raise ValueError(
          f'config.lp.k={k} must be smaller than the {num_images} images: it '
          f'lies in [1, N-1] = [1, {num_images - 1}] (an image is never its own '
          'neighbour).'
      )
    if k > LARGE_K_SHARE * num_images:
      warnings.warn(
          f'config.lp.k={k} is {k / num_images:.0%} of the {num_images} images: '
          'each list reaches far past its own class and the propagation blurs '
          'the classes together.',
          stacklevel=2,
      )
  if not 0 < alpha < 1:
    raise ValueError(
        f'config.lp.alpha={alpha} must lie in (0, 1): outside it I - alpha W '
        'is not positive definite and conjugate gradient solves something else.'
    )
  if not gamma > 0:
    raise ValueError(
        f'config.lp.gamma={gamma} must be positive (affinities are '
        'similarities to the power gamma).'
    )
  if not clip_negative and gamma != int(gamma):
    raise ValueError(
        f'config.lp.gamma={gamma} must be an integer with '
        'config.lp.clip_negative=False: a negative similarity has no real '
        'non-integer power; use an integer gamma or clip_negative=True.'
    )
  if cg_iterations != int(cg_iterations) or cg_iterations < 1:
    raise ValueError(f'config.lp.cg_iterations={cg_iterations} must be an integer, at ' 'least 1.')
  knn.check_engine(knn_engine)


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


def _check_finite(x: jax.Array) -> None:
  finite = jnp.isfinite(x)
  bad = int(jnp.size(x) - jnp.count_nonzero(finite))
  if bad:
    rows = np.flatnonzero(~np.asarray(finite.all(axis=1)))
    raise ValueError(
        f'features contain {bad} NaN/inf values in {rows.size} rows (first: row '
        f'{rows[0]}); the encoder diverged or its input was not normalised.'
    )
