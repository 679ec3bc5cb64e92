"""A .npy cache of a decoded dataset, so later runs skip slow decoding.

Images and labels go to .npy files; class names, file names and the
signature of the source files go to a .json written last. The cache is used
only when that json exists and its signature matches the sources now on disk,
so a half-written cache or a changed source is never read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from absl import logging
import numpy as np

from groundwork.data.dataset import ImageDataset


def source_signature(paths: Sequence[Path]) -> list[list]:
  """Name, size and modification time of each source file."""
  signature = []
  for path in paths:
    stat = os.stat(path)
    signature.append([Path(path).name, stat.st_size, stat.st_mtime_ns])
  return signature


def _paths(cache_dir: Path, name: str) -> tuple[Path, Path, Path]:
  return (
      cache_dir / f'{name}.images.npy',
      cache_dir / f'{name}.labels.npy',
      cache_dir / f'{name}.json',
  )


def read_cache(cache_dir: Path, name: str, signature: list) -> ImageDataset | None:
  """The cached dataset, or None when absent, stale or unreadable."""
  images_path, labels_path, meta_path = _paths(cache_dir, name)
  if not meta_path.is_file():
    return None
  try:
    meta = json.loads(meta_path.read_text())
    if meta.get('signature') != signature:
      logging.info('Cache %s is stale (its source files changed); rebuilding.', meta_path)
      return None
    return ImageDataset(
        images=np.load(images_path),
        labels=np.load(labels_path),
        class_names=meta['class_names'],
        filenames=meta['filenames'],
    )
  except (OSError, ValueError, KeyError) as e:
    logging.warning('Cache %s cannot be read (%s); rebuilding it.', meta_path, e)
    return None


def write_cache(cache_dir: Path, name: str, signature: list, dataset: ImageDataset) -> None:
  """Writes the cache; a directory that cannot be written only costs speed."""
  images_path, labels_path, meta_path = _paths(cache_dir, name)
  meta = {
      'signature': signature,
      'class_names': list(dataset.class_names),
      'filenames': dataset.filenames,
  }
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    for path, array in ((images_path, dataset.images), (labels_path, dataset.labels)):
      partial = path.with_name(path.name + '.partial')
      with open(partial, 'wb') as f:
        np.save(f, array)
      os.replace(partial, path)
    partial = meta_path.with_name(meta_path.name + '.partial')
    partial.write_text(json.dumps(meta))
    os.replace(partial, meta_path)
  except OSError as e:
    logging.warning(
        'Cannot write the dataset cache in %s (%s); the next run will '
        'decode the source files again.',
        cache_dir,
        e,
    )
