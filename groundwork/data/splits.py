"""Labelled subsets for semi-supervised runs, and the two-stream batch order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def balanced_labeled_indices(labels: np.ndarray, num_labels: int, seed: int) -> np.ndarray:
  """num_labels / C indices of each of the C classes present in `labels`, drawn by `seed`.

  Returns:
    int64 indices into `labels`, sorted.

  Raises:
    ValueError: num_labels is not a positive multiple of C, or exceeds what a
      class holds (the message names the class).
  """
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  if num_labels <= 0 or num_labels % len(classes):
    raise ValueError(
        f'num_labels={num_labels} is not divisible by the {len(classes)} '
        f'classes; use a positive multiple of {len(classes)} so every class '
        f'gets the same number of labels.'
    )
  per_class = num_labels // len(classes)
  if per_class > counts.min():
    small = classes[np.argmin(counts)]
    raise ValueError(
        f'num_labels={num_labels} needs {per_class} labels per class but '
        f'class {small} has only {counts.min()} images.'
    )
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def read_reference_labels(
    path: str | os.PathLike,
    filenames: Sequence[str],
    class_names: Sequence[str],
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """A published label list (`<N>_balanced_labels/<split>.txt`, lines 'filename class').

  Args:
    path: the list, as shipped with Mean Teacher and label propagation.
    filenames: the dataset's file names (ImageDataset.filenames).
    class_names: the dataset's class names.
    labels: the dataset's labels; when given, each line must agree with them.

  Returns:
    (indices int64 [N] into the dataset, labels int32 [N]) in file order.
  """
  path = Path(path)
  index_of = {name: i for i, name in enumerate(filenames)}
  label_of = {name: i for i, name in enumerate(class_names)}
  indices, file_labels, seen = [], [], set()
  for line_number, line in enumerate(path.read_text().splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    where = f'{path}, line {line_number}'
    if len(fields) != 2:
      raise ValueError(f'{where}: expected "filename classname", found {line!r}.')
    filename, class_name = fields
    if filename not in index_of:
      raise ValueError(
          f'{where}: file {filename!r} is not in the dataset; the list '
          f'belongs to another dataset or file naming.'
      )
    if class_name not in label_of:
      raise ValueError(
          f"{where}: class {class_name!r} is not one of the dataset's "
          f'{len(class_names)} classes.'
      )
    if filename in seen:
      raise ValueError(f'{where}: file {filename!r} is listed twice.')
    seen.add(filename)
    index, label = index_of[filename], label_of[class_name]
    if labels is not None and labels[index] != label:
      raise ValueError(
          f'{where}: file {filename!r} is labelled {class_name!r} here but '
          f'{class_names[labels[index]]!r} in the dataset.'
      )
    indices.append(index)
    file_labels.append(label)
  if not indices:
    raise ValueError(f'{path} lists no labelled files.')
  return np.asarray(indices, np.int64), np.asarray(file_labels, np.int32)


def two_stream_batches(
    unlabeled_idx: np.ndarray,
    labeled_idx: np.ndarray,
    batch_size: int,
    labeled_batch_size: int,
    seed: int,
    epoch: int,
) -> np.ndarray:
  """One epoch of batches mixing an unlabelled and a labelled stream (Mean Teacher).

  Each batch is batch_size - labeled_batch_size unlabelled indices followed by
  labeled_batch_size labelled ones. The epoch is one shuffled pass over the
  unlabelled indices (a last incomplete batch is dropped); the labelled
  indices cycle, reshuffled at each pass. The order depends only on
  (seed, epoch), so a resumed run sees the same batches.

  Returns:
    int64 [num_batches, batch_size].
  """
  unlabeled_idx, labeled_idx = np.asarray(unlabeled_idx), np.asarray(labeled_idx)
  if not 0 < labeled_batch_size < batch_size:
    raise ValueError(
        f'labeled_batch_size={labeled_batch_size} must lie strictly between 0 '
        f'and batch_size={batch_size}.'
    )
  unlabeled_per_batch = batch_size - labeled_batch_size
  num_batches = len(unlabeled_idx) // unlabeled_per_batch
  if num_batches == 0:
    raise ValueError(
        f'{len(unlabeled_idx)} unlabelled indices do not fill one batch of '
        f'{unlabeled_per_batch} unlabelled images.'
    )
  if len(labeled_idx) == 0:
    raise ValueError('The labelled stream is empty.')
  rng = np.random.default_rng([seed, epoch])
  unlabeled = rng.permutation(unlabeled_idx)[: num_batches * unlabeled_per_batch]
  needed = num_batches * labeled_batch_size
  passes = -(-needed // len(labeled_idx))
  labeled = np.concatenate([rng.permutation(labeled_idx) for _ in range(passes)])[:needed]
  return np.concatenate(
      [
          unlabeled.reshape(num_batches, unlabeled_per_batch),
          labeled.reshape(num_batches, labeled_batch_size),
      ],
      axis=1,
  ).astype(np.int64)
