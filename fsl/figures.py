"""Figures of a few-shot run: learning curves and class activation maps on novel classes.

A class activation map here is, for one novel-class image, the cosine of each position
of its feature map to its own class's prototype, imprinted from other images of the
class as the evaluation imprints them (`fsl.prototypes`), stretched over the image.
Lifchitz et al. (CVPR 2019) find dense classification's maps smoother and more aligned
with the object than GAP's. The images and their support are drawn from
`config.eval.seed` alone, so every run on the same novel classes maps the same images:
`benchmarks/cam_side_by_side.py` puts two runs' maps (GAP and DC) side by side from
the `class_activation_maps.npz` each run writes beside its figure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from fsl.prototypes import classify_by_prototypes, imprint_prototypes
from groundwork import figures

CAM_IMAGES = 6  # Query images, each of its own novel class.
CAM_SHOTS = 5  # Support images imprinting each class's prototype.
CAM_FILE = 'class_activation_maps'
# Keeps the draw apart from the evaluation's episodes, which use the same seed.
CAM_STREAM = 23


def cam_images(
    labels: np.ndarray, count: int, shots: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """`(query [n], support [n, shots])` image indices: one query and `shots` support images
  of each of `n = min(count, classes)` classes, drawn from `seed`. A class with fewer than
  `shots + 1` images lowers `shots` for every class."""
  rng = np.random.default_rng([seed, CAM_STREAM])
  classes, sizes = np.unique(labels, return_counts=True)
  shots = max(1, min(shots, int(sizes.min()) - 1))
  chosen = rng.choice(classes, min(count, len(classes)), replace=False)
  picks = [rng.choice(np.flatnonzero(labels == c), shots + 1, replace=False) for c in chosen]
  return np.asarray([p[0] for p in picks]), np.stack([p[1:] for p in picks])


def class_activation_maps(
    embed: Callable, images: np.ndarray, query: np.ndarray, support: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """`(maps [n, h, w], scores [n])`: each query's per-position cosine to its own class's
  prototype, and the cosine of its pooled feature (the evaluation's score).

  `embed`: uint8 images -> (pooled [B, C], feature_map [B, h, w, C]), as `fsl.train.embed_fn`.
  Supports and queries go through it as one batch.
  """
  n, shots = support.shape
  pooled, feature_maps = embed(images[np.concatenate([support.ravel(), query])])
  prototypes = imprint_prototypes(pooled[: n * shots], jnp.repeat(jnp.arange(n), shots), n)
  own = jnp.arange(n)
  maps = classify_by_prototypes(feature_maps[n * shots :], prototypes)[own, :, :, own]
  scores = classify_by_prototypes(pooled[n * shots :], prototypes)[own, own]
  return np.asarray(maps, np.float32), np.asarray(scores, np.float32)


def cam_figure(runs: Sequence[tuple[str, dict]], title: str = '') -> figures.Figure:
  """The images of the first run's record, then one row of maps per `(name, record)`."""
  first = runs[0][1]
  names = [str(name) for name in first['class_names']]
  return figures.heatmap_grid(
      first['images'],
      [(name, record['maps']) for name, record in runs],
      titles=[name.replace('/', '\n') for name in names],
      row_titles=[[f'cos {s:.2f}' for s in record['scores']] for _, record in runs],
      title=title,
  )


def run_name(config) -> str:
  return f'{config.head.upper()} ({config.encoder}, {config.dataset})'


def write_run_figures(config, workdir: str, embed: Callable, novel, step: int) -> None:
  """`learning_curves.png` and `class_activation_maps.png` (+ `.npz`) in `workdir/figures/`
  and TensorBoard, unless `config.figures` is off. Every process computes the maps (a jitted
  call over the devices); process 0 writes."""
  if not figures.enabled(config):
    return
  query, support = cam_images(novel.labels, CAM_IMAGES, CAM_SHOTS, config.eval.seed)
  maps, scores = class_activation_maps(embed, novel.images, query, support)
  writer = figures.FigureWriter(workdir, step)
  if not writer.writes:
    return
  figures.write_learning_curves(writer, workdir, title=run_name(config))
  record = dict(
      images=novel.images[query],
      maps=maps,
      scores=scores,
      class_names=np.asarray([novel.class_names[c] for c in novel.labels[query]]),
      query=query,
      support=support,
      seed=np.asarray(config.eval.seed),
      dataset=np.asarray(config.dataset),
      head=np.asarray(config.head),
  )
  os.makedirs(writer.directory, exist_ok=True)
  np.savez(writer.path(CAM_FILE, '.npz'), **record)
  title = f'{run_name(config)}: cosine to the true class prototype ({support.shape[1]}-shot)'
  writer.write(CAM_FILE, cam_figure([(config.head.upper(), record)], title))


def read_cam_record(workdir: str) -> dict:
  """The maps a run wrote (`figures/class_activation_maps.npz`), or a FileNotFoundError
  saying how to make them."""
  path = os.path.join(workdir, figures.FIGURES_DIR, CAM_FILE + '.npz')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} does not exist: train {workdir} with config.figures=True (the default), or '
        'run its train command again to re-evaluate it and write its figures.'
    )
  with np.load(path) as saved:
    return {key: saved[key] for key in saved.files}
