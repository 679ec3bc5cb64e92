"""Figures of a semi-supervised run, in `workdir/figures/` and TensorBoard.

- learning_curves.png: every stage on one step axis, stage 2 after stage 1;
- embedding.png: the student's features of a fixed subsample of the training images in
  2-D (scikit-learn's t-SNE), each point coloured by the label the method gives it (its
  propagated pseudo-label; its predicted label for a method without propagation), opacity
  and size by its certainty (label propagation's weight omega, or the same entropy
  certainty of the softmax), labelled images starred in their own label's colour, as
  Iscen et al. (CVPR 2019) picture propagated labels;
- confusion.png: those labels of the unlabelled images against their true labels.

The subsample and t-SNE's start are drawn from `config.seed`; all of it takes seconds.
"""

from __future__ import annotations

import jax
import numpy as np

from groundwork import figures
from groundwork.evaluation import map_in_batches
from groundwork.training.metric_log import read_scalars
from semisup.label_propagation import certainty
from semisup.stages import METHODS, PROPAGATION_STAGES

TSNE_POINTS = 1000
TSNE_PERPLEXITY = 30.0
# Keeps the subsample apart from the label draw, which uses the same seed.
TSNE_STREAM = 24


def stage_offsets(curves: dict, stages) -> dict[str, int]:
  """Where each stage's steps start on one axis: after the steps the stages before it logged."""
  offsets, start = {}, 0
  for stage in stages:
    offsets[stage] = start
    start += max(
        (s for tag, points in curves.items() if tag.startswith(f'{stage}/') for s, _ in points),
        default=0,
    )
  return offsets


def assigned_labels(
    config, state, extra, fns, train, labeled_idx
) -> tuple[np.ndarray, np.ndarray, str]:
  """`(labels [N], certainty [N], what they are)`: the propagated pseudo-labels and their
  weights, or, without propagation, the student's predictions and their entropy certainty;
  labelled images keep their own label with certainty 1 either way."""
  if any(stage in PROPAGATION_STAGES for stage in METHODS[config.method]):
    labels, weights = np.asarray(extra['pseudo_labels']), np.asarray(extra['weights'])
    what = 'propagated label'
  else:
    logits = map_in_batches(
        lambda b: fns.student(state, b)[0], train.images, config.eval_batch_size
    )
    labels, weights = jax.device_get(certainty(jax.nn.softmax(logits, axis=-1)))
    what = 'predicted label'
  labels, weights = np.array(labels, np.int64), np.array(weights, np.float64)
  labels[labeled_idx], weights[labeled_idx] = train.labels[labeled_idx], 1.0
  return labels, weights, what


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
  """`[N, 2]` t-SNE of L2-normalised features (the cosine geometry of the propagation graph)."""
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel  # Seconds to load.
  from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel

  x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  perplexity = min(TSNE_PERPLEXITY, (len(x) - 1) / 3)
  # One thread: its OpenMP threads spin-wait against any other load on the cores (the
  # trainer's, other jobs'), which made 1,000 points take 25-50 s on 2 busy cores instead of 5.
  with threadpool_limits(1, user_api='openmp'):
    return TSNE(2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x)


def write_run_figures(config, workdir: str, state, extra, fns, train, unlabeled_idx) -> None:
  """The three figures above, unless `config.figures` is off. Every process runs the network
  (a jitted call over the devices); process 0 embeds, draws and writes."""
  if not figures.enabled(config):
    return
  labeled_idx = np.setdiff1d(np.arange(len(train.labels)), unlabeled_idx)
  labels, weights, what = assigned_labels(config, state, extra, fns, train, labeled_idx)
  rng = np.random.default_rng([config.seed, TSNE_STREAM])
  sample = np.sort(
      rng.choice(len(train.labels), min(TSNE_POINTS, len(train.labels)), replace=False)
  )
  _, features = map_in_batches(
      lambda b: fns.student(state, b), train.images[sample], config.eval_batch_size
  )
  writer = figures.FigureWriter(workdir, int(state.step))
  if not writer.writes:
    return
  name = f'{config.method} on {config.dataset}, {len(labeled_idx)} labels'
  curves = read_scalars(workdir)
  offsets = stage_offsets(curves, METHODS[config.method])
  writer.write('learning_curves', figures.learning_curves(curves, offsets, title=name))
  marked = np.isin(sample, labeled_idx)
  writer.write(
      'embedding',
      figures.embedding_scatter(
          tsne(np.asarray(features, np.float64), config.seed),
          labels[sample],
          weights[sample],
          marked,
          train.class_names,
          title=f'{name}: {len(sample)} training images (t-SNE)\n'
          f'colour = {what}, opacity and size = certainty',
      ),
  )
  true, given = train.labels[unlabeled_idx], labels[unlabeled_idx]
  writer.write(
      'confusion',
      figures.confusion_figure(
          figures.confusion_matrix(true, given, train.num_classes),
          train.class_names,
          title=f'{name}: {what}s of the {len(unlabeled_idx)} unlabelled images, '
          f'{100 * np.mean(true == given):.1f}% right',
          predicted_name=what,
      ),
  )
