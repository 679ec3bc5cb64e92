"""Fashion-MNIST from the official IDX files (gzipped or not), or a tfds copy.

The default directory is where Debian's `dataset-fashion-mnist` package puts
the files.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from groundwork.data.dataset import ImageDataset
from groundwork.data.tfds_source import load_tfds_split, prepared_tfds_dir

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
CLASS_NAMES = [
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
]
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_UBYTE = 0x08


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """An unsigned-byte IDX array with `ndim` dimensions, checked against its header.

  Raises:
    ValueError: naming `path`, when the magic number, the number of dimensions
      or the amount of data disagree with the header, or the gzip stream is broken.
  """
  path = Path(path)
  opener = gzip.open if path.suffix == '.gz' else open
  try:
    with opener(path, 'rb') as f:
      header = f.read(4)
      if len(header) < 4:
        raise ValueError(f'{path}: the file ends inside the IDX header; it is truncated.')
      zero, dtype_code, dims = struct.unpack('>HBB', header)
      if zero != 0 or dtype_code != _UBYTE or dims != ndim:
        raise ValueError(
            f'{path}: wrong IDX magic number 0x{int.from_bytes(header, "big"):08x}, expected '
            f'0x{0x800 + ndim:08x} (unsigned bytes, {ndim} dimensions); the file is not '
            f'the IDX file it is named after.'
        )
      raw_shape = f.read(4 * ndim)
      if len(raw_shape) < 4 * ndim:
        raise ValueError(f'{path}: the file ends inside the IDX header; it is truncated.')
      shape = struct.unpack(f'>{ndim}I', raw_shape)
      data = f.read()
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise ValueError(
        f'{path}: broken gzip stream ({e}); the file is truncated or ' f'corrupt.'
    ) from None
  expected = int(np.prod(shape))
  if len(data) != expected:
    raise ValueError(
        f'{path}: the header announces shape {shape} ({expected} bytes of '
        f'data) but the file holds {len(data)}; it is truncated or corrupt.'
    )
  return np.frombuffer(data, np.uint8).reshape(shape)


def _find(data_dir: Path, stem: str) -> Path | None:
  for name in (stem + '.gz', stem):
    if (data_dir / name).is_file():
      return data_dir / name
  return None


def _read_split(data_dir: Path, split: str) -> ImageDataset:
  image_path, label_path = (_find(data_dir, stem) for stem in _FILES[split])
  images = read_idx(image_path, 3)
  labels = read_idx(label_path, 1)
  if images.shape[1:] != (28, 28):
    raise ValueError(f'{image_path}: wrong shape {images.shape}, expected N x 28 x 28.')
  if len(labels) != len(images):
    raise ValueError(
        f'{label_path} has {len(labels)} labels but {image_path} has '
        f'{len(images)} images; the two files do not belong together.'
    )
  if labels.size and labels.max() >= len(CLASS_NAMES):
    raise ValueError(f'{label_path}: label {labels.max()} is outside 0..9.')
  return ImageDataset(
      images=images[..., None].copy(), labels=labels.astype(np.int32), class_names=list(CLASS_NAMES)
  )


def load_fashion_mnist(
    data_dir: str | os.PathLike = DEFAULT_DIR,
) -> tuple[ImageDataset, ImageDataset]:
  """(train 60,000, test 10,000) images, uint8 [N, 28, 28, 1], labels 0..9."""
  data_dir = Path(data_dir).expanduser()
  stems = [stem for pair in _FILES.values() for stem in pair]
  found = [_find(data_dir, stem) for stem in stems]
  if all(found):
    return _read_split(data_dir, 'train'), _read_split(data_dir, 'test')
  tfds_dir = prepared_tfds_dir(data_dir, 'fashion_mnist')
  if tfds_dir is not None:
    return load_tfds_split(tfds_dir, 'train'), load_tfds_split(tfds_dir, 'test')
  missing = [stem + '.gz' for stem, path in zip(stems, found) if path is None]
  raise FileNotFoundError(
      f'Fashion-MNIST files {missing} are not in {data_dir.resolve()}. Install them with '
      f'`apt-get install dataset-fashion-mnist` (into {DEFAULT_DIR}) or download them from '
      f'https://github.com/zalandoresearch/fashion-mnist, or prepare the tensorflow-datasets '
      f'copy fashion_mnist under data_dir.'
  )
