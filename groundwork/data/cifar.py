"""CIFAR-10 and CIFAR-100 from the official python version, and their few-shot splits.

data_dir may hold the tarball (cifar-10-python.tar.gz, cifar-100-python.tar.gz,
read without unpacking), the extracted folder (cifar-10-batches-py/,
cifar-100-python/), or be that folder itself; failing those, a copy prepared
with tensorflow-datasets ('cifar10', 'cifar100') under data_dir.

File names follow the Mean Teacher unpacking, '<index>_<class>.png' with the
index running over the training batches in order (and over the test set), so
the reference label lists shipped with Mean Teacher and label propagation
select the same images. Copies read through tfds carry no file names.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groundwork.data.dataset import ImageDataset, concatenate
from groundwork.data.legacy_pickle import as_text, read_legacy_pickle, str_keys
from groundwork.data.tfds_source import load_tfds_split, prepared_tfds_dir

# The 20 CIFAR-100 superclasses and their fine classes, as published with the dataset.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    'aquatic_mammals': ('beaver', 'dolphin', 'otter', 'seal', 'whale'),
    'fish': ('aquarium_fish', 'flatfish', 'ray', 'shark', 'trout'),
    'flowers': ('orchid', 'poppy', 'rose', 'sunflower', 'tulip'),
    'food_containers': ('bottle', 'bowl', 'can', 'cup', 'plate'),
    'fruit_and_vegetables': ('apple', 'mushroom', 'orange', 'pear', 'sweet_pepper'),
    'household_electrical_devices': ('clock', 'keyboard', 'lamp', 'telephone', 'television'),
    'household_furniture': ('bed', 'chair', 'couch', 'table', 'wardrobe'),
    'insects': ('bee', 'beetle', 'butterfly', 'caterpillar', 'cockroach'),
    'large_carnivores': ('bear', 'leopard', 'lion', 'tiger', 'wolf'),
    'large_man-made_outdoor_things': ('bridge', 'castle', 'house', 'road', 'skyscraper'),
    'large_natural_outdoor_scenes': ('cloud', 'forest', 'mountain', 'plain', 'sea'),
    'large_omnivores_and_herbivores': ('camel', 'cattle', 'chimpanzee', 'elephant', 'kangaroo'),
    'medium_mammals': ('fox', 'porcupine', 'possum', 'raccoon', 'skunk'),
    'non-insect_invertebrates': ('crab', 'lobster', 'snail', 'spider', 'worm'),
    'people': ('baby', 'boy', 'girl', 'man', 'woman'),
    'reptiles': ('crocodile', 'dinosaur', 'lizard', 'snake', 'turtle'),
    'small_mammals': ('hamster', 'mouse', 'rabbit', 'shrew', 'squirrel'),
    'trees': ('maple_tree', 'oak_tree', 'palm_tree', 'pine_tree', 'willow_tree'),
    'vehicles_1': ('bicycle', 'bus', 'motorcycle', 'pickup_truck', 'train'),
    'vehicles_2': ('lawn_mower', 'rocket', 'streetcar', 'tank', 'tractor'),
}

# CIFAR-FS (Bertinetto et al., ICLR 2019): 64 / 16 / 20 fine classes.
CIFAR_FS_SPLITS: dict[str, tuple[str, ...]] = {
    'train': (
        'apple',
        'aquarium_fish',
        'bear',
        'bee',
        'bottle',
        'bowl',
        'boy',
        'bridge',
        'bus',
        'can',
        'castle',
        'caterpillar',
        'chair',
        'clock',
        'cloud',
        'cockroach',
        'couch',
        'cup',
        'dinosaur',
        'dolphin',
        'elephant',
        'forest',
        'girl',
        'hamster',
        'house',
        'kangaroo',
        'keyboard',
        'lawn_mower',
        'lion',
        'lizard',
        'lobster',
        'mountain',
        'mouse',
        'mushroom',
        'oak_tree',
        'orange',
        'orchid',
        'palm_tree',
        'pear',
        'pine_tree',
        'plate',
        'porcupine',
        'possum',
        'rabbit',
        'raccoon',
        'ray',
        'road',
        'seal',
        'shrew',
        'skunk',
        'skyscraper',
        'snake',
        'spider',
        'squirrel',
        'streetcar',
        'sunflower',
        'tank',
        'tiger',
        'train',
        'trout',
        'tulip',
        'turtle',
        'willow_tree',
        'wolf',
    ),
    'val': (
        'beaver',
        'beetle',
        'butterfly',
        'camel',
        'cattle',
        'crab',
        'crocodile',
        'flatfish',
        'lamp',
        'maple_tree',
        'motorcycle',
        'otter',
        'sea',
        'shark',
        'television',
        'tractor',
    ),
    'test': (
        'baby',
        'bed',
        'bicycle',
        'chimpanzee',
        'fox',
        'leopard',
        'man',
        'pickup_truck',
        'plain',
        'poppy',
        'rocket',
        'rose',
        'snail',
        'sweet_pepper',
        'table',
        'telephone',
        'wardrobe',
        'whale',
        'woman',
        'worm',
    ),
}

# FC100 (Oreshkin et al., NeurIPS 2018): 12 / 4 / 4 superclasses (60 / 20 / 20 fine classes).
FC100_SPLITS: dict[str, tuple[str, ...]] = {
    'train': (
        'fish',
        'flowers',
        'food_containers',
        'fruit_and_vegetables',
        'household_electrical_devices',
        'household_furniture',
        'large_man-made_outdoor_things',
        'large_natural_outdoor_scenes',
        'reptiles',
        'trees',
        'vehicles_1',
        'vehicles_2',
    ),
    'val': (
        'large_carnivores',
        'large_omnivores_and_herbivores',
        'non-insect_invertebrates',
        'small_mammals',
    ),
    'test': ('aquatic_mammals', 'insects', 'medium_mammals', 'people'),
}

_CIFAR10 = dict(
    folder='cifar-10-batches-py',
    tarball='cifar-10-python.tar.gz',
    train=tuple(f'data_batch_{i}' for i in range(1, 6)),
    test=('test_batch',),
    meta='batches.meta',
    names_key='label_names',
    labels_key='labels',
    tfds='cifar10',
)
_CIFAR100 = dict(
    folder='cifar-100-python',
    tarball='cifar-100-python.tar.gz',
    train=('train',),
    test=('test',),
    meta='meta',
    names_key='fine_label_names',
    labels_key='fine_labels',
    tfds='cifar100',
)


class _Source:
  """The python-version files, from a folder or straight from the tarball."""

  def __init__(self, data_dir: Path, spec: dict):
    self.folder = None
    self.tarball = None
    for folder in (data_dir / spec['folder'], data_dir):
      if (folder / spec['meta']).is_file():
        self.folder = folder
        return
    if (data_dir / spec['tarball']).is_file():
      self.tarball = data_dir / spec['tarball']
      self.prefix = spec['folder']

  def found(self) -> bool:
    return self.folder is not None or self.tarball is not None

  def where(self, name: str) -> str:
    return f'{self.folder}/{name}' if self.folder else f'{self.tarball}:{self.prefix}/{name}'

  def read(self, names: Sequence[str]) -> dict[str, object]:
    """Unpickles each named file; a tarball is decompressed once for all of them."""
    if self.folder is not None:
      out = {}
      for name in names:
        path = self.folder / name
        if not path.is_file():
          raise FileNotFoundError(
              f'{path} is missing; the CIFAR folder {self.folder} ' f'is incomplete.'
          )
        with open(path, 'rb') as f:
          out[name] = read_legacy_pickle(str(path), f)
      return out
    wanted = {f'{self.prefix}/{name}': name for name in names}
    out = {}
    try:
      with tarfile.open(self.tarball, 'r:gz') as tar:
        for member in tar:
          if member.name in wanted:
            name = wanted[member.name]
            out[name] = read_legacy_pickle(self.where(name), tar.extractfile(member))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise ValueError(
          f'{self.tarball}: not a readable tar.gz archive ({e}); the file '
          f'is truncated or corrupt.'
      ) from None
    missing = [f'{self.prefix}/{n}' for n in names if n not in out]
    if missing:
      raise ValueError(
          f'{self.tarball} lacks {missing}; the archive is truncated or '
          f'not the official python version.'
      )
    return out


def _read_batches(
    source: _Source,
    contents: dict[str, object],
    names: Sequence[str],
    labels_key: str,
    class_names: list[str],
) -> ImageDataset:
  images, labels = [], []
  for name in names:
    where = source.where(name)
    batch = str_keys(contents[name], where, ('data', labels_key))
    data = batch['data']
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
      raise ValueError(
          f'{where}: "data" must be uint8 [N, 3072] (3x32x32 rows), found '
          f'{getattr(data, "dtype", type(data).__name__)} '
          f'{getattr(data, "shape", "")}.'
      )
    batch_labels = np.asarray(batch[labels_key], np.int64)
    if batch_labels.shape != (len(data),):
      raise ValueError(
          f'{where}: "{labels_key}" has {batch_labels.size} entries for ' f'{len(data)} images.'
      )
    if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= len(class_names)):
      raise ValueError(
          f'{where}: "{labels_key}" holds values outside ' f'0..{len(class_names) - 1}.'
      )
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(batch_labels.astype(np.int32))
  labels = np.concatenate(labels)
  filenames = [f'{i}_{class_names[y]}.png' for i, y in enumerate(labels)]
  return ImageDataset(
      images=np.ascontiguousarray(np.concatenate(images)),
      labels=labels,
      class_names=class_names,
      filenames=filenames,
  )


def _load(data_dir: str | os.PathLike, spec: dict) -> tuple[ImageDataset, ImageDataset]:
  data_dir = Path(data_dir).expanduser()
  source = _Source(data_dir, spec)
  if source.found():
    contents = source.read([spec['meta'], *spec['train'], *spec['test']])
    meta = str_keys(contents[spec['meta']], source.where(spec['meta']), (spec['names_key'],))
    class_names = [as_text(n) for n in meta[spec['names_key']]]
    return tuple(
        _read_batches(source, contents, spec[part], spec['labels_key'], class_names)
        for part in ('train', 'test')
    )
  tfds_dir = prepared_tfds_dir(data_dir, spec['tfds'])
  if tfds_dir is not None:
    return load_tfds_split(tfds_dir, 'train'), load_tfds_split(tfds_dir, 'test')
  raise FileNotFoundError(
      f'No {spec["tfds"]} in {data_dir.resolve()}: expected {spec["tarball"]}, the '
      f'extracted {spec["folder"]}/ (from https://www.cs.toronto.edu/~kriz/cifar.html), '
      f'or a tensorflow-datasets copy under {spec["tfds"]}/<version>/.'
  )


def load_cifar10(data_dir: str | os.PathLike) -> tuple[ImageDataset, ImageDataset]:
  """(train 50,000, test 10,000) CIFAR-10 images, uint8 [N, 32, 32, 3]."""
  return _load(data_dir, _CIFAR10)


def load_cifar100(data_dir: str | os.PathLike) -> tuple[ImageDataset, ImageDataset]:
  """(train 50,000, test 10,000) CIFAR-100 images with the 100 fine labels."""
  return _load(data_dir, _CIFAR100)


def _fc100_classes(split: str) -> list[str]:
  return [c for superclass in FC100_SPLITS[split] for c in CIFAR100_SUPERCLASSES[superclass]]


_FEW_SHOT_CLASSES = {
    'cifar_fs': lambda split: CIFAR_FS_SPLITS[split],
    'fc100': _fc100_classes,
}


def load_cifar_fewshot(data_dir: str | os.PathLike, dataset: str) -> dict[str, ImageDataset]:
  """The 'train', 'val' and 'test' splits of CIFAR-FS (`dataset='cifar_fs'`) or FC100
  ('fc100'): all 600 CIFAR-100 images of each class of a split, labels in sorted class order,
  CIFAR-100 read once."""
  if dataset not in _FEW_SHOT_CLASSES:
    raise ValueError(
        f'{dataset!r} is not a CIFAR few-shot benchmark; use one of ' f'{list(_FEW_SHOT_CLASSES)}.'
    )
  train, test = load_cifar100(data_dir)
  images = concatenate([train, test])
  return {
      split: images.select_classes(sorted(_FEW_SHOT_CLASSES[dataset](split)))
      for split in ('train', 'val', 'test')
  }


def load_cifar_fs(data_dir: str | os.PathLike, split: str) -> ImageDataset:
  """A CIFAR-FS split: all 600 images of each of its classes, labels in sorted class order."""
  if split not in CIFAR_FS_SPLITS:
    raise ValueError(f'CIFAR-FS split {split!r} is unknown; use one of {list(CIFAR_FS_SPLITS)}.')
  return load_cifar_fewshot(data_dir, 'cifar_fs')[split]


def load_fc100(data_dir: str | os.PathLike, split: str) -> ImageDataset:
  """An FC100 split: all 600 images of each fine class of its superclasses."""
  if split not in FC100_SPLITS:
    raise ValueError(f'FC100 split {split!r} is unknown; use one of {list(FC100_SPLITS)}.')
  return load_cifar_fewshot(data_dir, 'fc100')[split]
