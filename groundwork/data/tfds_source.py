"""Reading a dataset that the user has already prepared with tensorflow-datasets.

tensorflow-datasets, and the TensorFlow it reads tfrecords with, are imported
only here and only when such a copy is found: importing them costs seconds, and
TensorFlow is an optional extra (`pip install -e '.[tensorflow]'`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from groundwork.data.dataset import ImageDataset

INSTALL_TENSORFLOW = "pip install -e '.[tensorflow]' (or make install EXTRAS=tensorflow)"


def prepared_tfds_dir(data_dir: str | os.PathLike, name: str) -> Path | None:
  """The newest prepared version directory of tfds dataset `name`, if any.

  Looks in data_dir/<name>/<version>/ and data_dir/<version>/ (data_dir already
  pointing at the dataset), the layout `tfds.builder(name, data_dir=...)` writes.
  """
  data_dir = Path(data_dir).expanduser()
  candidates = list((data_dir / name).glob('*/dataset_info.json'))
  if data_dir.name == name:
    candidates += list(data_dir.glob('*/dataset_info.json'))
  if not candidates:
    return None

  def version_key(path: Path):
    return tuple(int(p) if p.isdigit() else -1 for p in path.parent.name.split('.'))

  return max(candidates, key=version_key).parent


def _require_tensorflow(version_dir: Path) -> None:
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ImportError(
        f'{version_dir} is a tensorflow-datasets copy, and reading it needs TensorFlow, '
        f'which cannot be imported ({e}). Install the optional extra: {INSTALL_TENSORFLOW}; '
        "or read the dataset's published files instead."
    ) from None


def load_tfds_split(version_dir: Path, split: str, label_key: str = 'label') -> ImageDataset:
  """One split of a prepared tfds image dataset as an ImageDataset."""
  _require_tensorflow(version_dir)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    builder = tfds.builder_from_directory(str(version_dir))
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  except Exception as e:  # tfds raises many types for an unusable copy.
    raise ValueError(
        f'{version_dir}: the tensorflow-datasets copy cannot be read '
        f'({type(e).__name__}: {e}); prepare it again with '
        f'tfds.builder(...).download_and_prepare().'
    ) from None
  images = np.asarray(arrays['image'], np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  return ImageDataset(
      images=images,
      labels=np.asarray(arrays[label_key], np.int32),
      class_names=list(builder.info.features[label_key].names),
  )
