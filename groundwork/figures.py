"""Figures of a run: PNG files in `<workdir>/figures/` and images in TensorBoard.

The projects draw their own figures (`fsl.figures`, `semisup.figures`) with these pieces.
Figures are drawn with matplotlib's object API on its Agg canvas: no pyplot, no global
backend, nothing shown. matplotlib is imported on first use, so importing a trainer does
not load it. Only process 0 writes; the same inputs give the same PNG bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np

from groundwork.training.metric_log import MetricLogger, read_scalars

if TYPE_CHECKING:
  from matplotlib.figure import Figure

FIGURES_DIR = 'figures'
DPI = 100
# Learning-curve panels: a title and which metric names (the part after `<prefix>/`) it plots.
CURVE_PANELS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ('loss', lambda name: name == 'loss'),
    ('accuracy / error', lambda name: name.endswith(('accuracy', 'error', 'error_teacher'))),
    ('learning rate', lambda name: name == 'lr'),
)


def enabled(config) -> bool:
  """Whether `config.figures` asks for figures (configs written before the switch: yes)."""
  return bool(config.get('figures', True))


def new_figure(width: float, height: float) -> Figure:
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  return Figure(figsize=(width, height), dpi=DPI, layout='constrained')


def png_bytes(figure: Figure) -> bytes:
  """The figure as PNG; no timestamp or version in its metadata, so a rerun gives the same bytes."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=DPI, metadata={'Software': None})
  return buffer.getvalue()


class FigureWriter:
  """Writes each figure to `<directory>/figures/<name>.png` and TensorBoard's `figures/<name>`.

  Only process 0 writes: on the others `write` returns None and creates nothing.
  """

  def __init__(self, directory: str, step: int):
    self.directory = os.path.join(directory, FIGURES_DIR)
    self.writes = jax.process_index() == 0
    self._step = step
    self._log = MetricLogger(directory, step, prefix=FIGURES_DIR) if self.writes else None

  def path(self, name: str, suffix: str = '.png') -> str:
    return os.path.join(self.directory, name + suffix)

  def write(self, name: str, figure: Figure) -> str | None:
    if not self.writes:
      return None
    png = png_bytes(figure)
    os.makedirs(self.directory, exist_ok=True)
    with open(self.path(name), 'wb') as f:
      f.write(png)
    self._log.log_image(self._step, name, png)
    return self.path(name)


# ----------------------------------------------------------------------------
# Learning curves.
# ----------------------------------------------------------------------------
def learning_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    offsets: Mapping[str, int] | None = None,
    title: str = '',
) -> Figure:
  """Loss, accuracy or error, and learning rate against steps, one line per `<prefix>/<name>`.

  `curves` is what `read_scalars` returns. `offsets` shifts each prefix's steps (a stage
  counting its steps from its own start); each shifted prefix's start is marked. A series
  of one point (a final test result) is a marker.
  """
  offsets = offsets or {}
  panels = [
      (panel, [(tag, curves[tag]) for tag in curves if wanted(tag.partition('/')[2] or tag)])
      for panel, wanted in CURVE_PANELS
  ]
  panels = [(panel, series) for panel, series in panels if series]
  figure = new_figure(4.2 * max(len(panels), 1), 3.4)
  if not panels:
    figure.text(0.5, 0.5, 'no scalars logged', ha='center', va='center')
    return figure
  axes = figure.subplots(1, len(panels), squeeze=False)[0]
  for ax, (panel, series) in zip(axes, panels):
    for tag, points in series:
      shift = offsets.get(tag.partition('/')[0], 0)
      steps = np.asarray([s for s, _ in points]) + shift
      values = np.asarray([v for _, v in points])
      style = dict(marker='o', linestyle='none') if len(points) == 1 else dict(linewidth=1.2)
      ax.plot(steps, values, label=tag, **style)
    for prefix, shift in offsets.items():
      if shift > 0:
        ax.axvline(shift, color='0.6', linestyle=':', linewidth=1)
        ax.text(shift, 1, f' {prefix}', transform=ax.get_xaxis_transform(), va='top', fontsize=7)
    ax.set_title(panel)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    figure.suptitle(title, fontsize=10)
  return figure


def write_learning_curves(
    writer: FigureWriter, logdir: str, offsets: Mapping[str, int] | None = None, title: str = ''
) -> str | None:
  """`learning_curves.png` from the event files in `logdir`."""
  if not writer.writes:
    return None
  return writer.write('learning_curves', learning_curves(read_scalars(logdir), offsets, title))


# ----------------------------------------------------------------------------
# Maps over images and class scatter plots.
# ----------------------------------------------------------------------------
def _show_image(ax, image: np.ndarray) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  else:
    ax.imshow(image, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])


def heatmap_grid(
    images: np.ndarray,
    rows: Sequence[tuple[str, np.ndarray]],
    titles: Sequence[str] | None = None,
    row_titles: Sequence[Sequence[str]] | None = None,
    title: str = '',
) -> Figure:
  """Images `[N, H, W, C]` uint8 on the first row; each of `rows`, `(name, maps [N, h, w])`,
  a row of those images under their map, stretched over the image with bilinear upsampling.

  Each map is scaled to its own range (the usual class-activation-map display), so rows
  compare by where they are high, not by their values; `row_titles[r][i]` may give each
  map's values.
  """
  n = len(images)
  figure = new_figure(1.6 * n + 0.6, 1.7 * (len(rows) + 1) + (0.3 if title else 0))
  axes = figure.subplots(len(rows) + 1, n, squeeze=False)
  height, width = images.shape[1:3]
  extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # Map cells cover the image's pixels.
  for i in range(n):
    _show_image(axes[0, i], images[i])
    if titles:
      axes[0, i].set_title(titles[i], fontsize=7)
    for r, (_, maps) in enumerate(rows, start=1):
      low, high = float(maps[i].min()), float(maps[i].max())
      scaled = (maps[i] - low) / (high - low) if high > low else np.zeros_like(maps[i])
      _show_image(axes[r, i], images[i])
      axes[r, i].imshow(
          scaled, cmap='jet', alpha=0.5, vmin=0, vmax=1, extent=extent, interpolation='bilinear'
      )
      if row_titles:
        axes[r, i].set_title(row_titles[r - 1][i], fontsize=7)
  for r, (name, _) in enumerate(rows, start=1):
    axes[r, 0].set_ylabel(name, fontsize=9)
  axes[0, 0].set_ylabel('image', fontsize=9)
  if title:
    figure.suptitle(title, fontsize=10)
  return figure


def class_colors(num_classes: int) -> np.ndarray:
  """`[num_classes, 4]` RGBA: tab10 / tab20 where they suffice, else hues around the circle."""
  from matplotlib import colormaps, colors  # pylint: disable=import-outside-toplevel

  if num_classes <= 20:
    name = 'tab10' if num_classes <= 10 else 'tab20'
    return colors.to_rgba_array(colormaps[name].colors[:num_classes])
  return colormaps['hsv'](np.linspace(0, 1, num_classes, endpoint=False))


def embedding_scatter(
    points: np.ndarray,
    labels: np.ndarray,
    certainty: np.ndarray,
    marked: np.ndarray,
    class_names: Sequence[str],
    title: str = '',
) -> Figure:
  """2-D points `[N, 2]` coloured by `labels`, opacity and size growing with `certainty` in
  [0, 1]; `marked` points (the labelled ones) drawn as black-edged stars on top."""
  certainty = np.clip(np.asarray(certainty, np.float64), 0.0, 1.0)
  colors = class_colors(len(class_names))[labels].copy()
  colors[:, 3] = 0.15 + 0.85 * certainty
  figure = new_figure(7.0, 6.0)
  ax = figure.subplots()
  rest = ~marked
  ax.scatter(*points[rest].T, c=colors[rest], s=4 + 26 * certainty[rest], linewidths=0)
  ax.scatter(
      *points[marked].T, c=colors[marked][:, :3], s=60, marker='*', edgecolors='k', linewidths=0.6
  )
  if len(class_names) <= 20:
    from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

    palette = class_colors(len(class_names))
    handles = [
        Line2D([], [], marker='o', linestyle='none', color=palette[c], label=name)
        for c, name in enumerate(class_names)
    ]
    handles.append(
        Line2D(
            [], [], marker='*', linestyle='none', color='w', markeredgecolor='k', label='labelled'
        )
    )
    ax.legend(handles=handles, fontsize=7, loc='center left', bbox_to_anchor=(1.0, 0.5))
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=10)
  return figure


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """`[num_classes, num_classes]` counts: row = true class, column = predicted class."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (np.asarray(true), np.asarray(predicted)), 1)
  return counts


def confusion_figure(
    counts: np.ndarray, class_names: Sequence[str], title: str = '', predicted_name='predicted'
) -> Figure:
  """Row-normalised confusion matrix (each true class's row sums to 1); values written in
  the cells for up to 20 classes."""
  rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  k = len(class_names)
  side = min(max(4.0, 0.45 * k + 2.0), 14.0)
  figure = new_figure(side + 1.0, side)
  ax = figure.subplots()
  shown = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1, interpolation='nearest')
  figure.colorbar(shown, ax=ax, fraction=0.046, label='fraction of the true class')
  if k <= 20:
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    for t in range(k):
      for p in range(k):
        if rows[t, p] >= 0.005:
          color = 'w' if rows[t, p] > 0.5 else 'k'
          ax.text(p, t, f'{rows[t, p]:.2f}', ha='center', va='center', fontsize=6, color=color)
  ax.set_xlabel(predicted_name)
  ax.set_ylabel('true label')
  if title:
    ax.set_title(title, fontsize=10)
  return figure
