"""Tiny fake files in the published dataset formats, shared by the data and recipe tests.

Each writer emits the bytes the original distribution holds (Python 2 pickles, Ravi csv with
JPEGs, Ren cache pickles, CIFAR python batches, IDX files), so the real loaders run on them.
"""

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from groundwork.data import CIFAR100_SUPERCLASSES

# ---------------------------------------------------------------- Python 2 pickles
# Python 3 cannot write Python 2 `str` opcodes, so the fixture emits the opcode
# stream cPickle (protocol 2) writes: SHORT_BINSTRING/BINSTRING for str and
# numpy's own (_reconstruct, state) form for arrays.


def _py2_str(raw: bytes) -> bytes:
  if len(raw) < 256:
    return b'U' + bytes([len(raw)]) + raw
  return b'T' + struct.pack('<I', len(raw)) + raw


def _py2_int(value: int) -> bytes:
  if 0 <= value < 256:
    return b'K' + bytes([value])
  return b'J' + struct.pack('<i', value)


def _py2_array(array: np.ndarray) -> bytes:
  array = np.ascontiguousarray(array)
  assert array.dtype == np.uint8
  dtype = (
      b'cnumpy\ndtype\n'
      + _py2_str(b'u1')
      + _py2_int(0)
      + _py2_int(1)
      + b'\x87R'
      + b'('
      + _py2_int(3)
      + _py2_str(b'|')
      + b'NNN'
      + b'J\xff\xff\xff\xff' * 2
      + _py2_int(0)
      + b'tb'
  )
  shape = b'(' + b''.join(_py2_int(d) for d in array.shape) + b't'
  return (
      b'cnumpy.core.multiarray\n_reconstruct\n'
      + b'cnumpy\nndarray\n'
      + b'('
      + _py2_int(0)
      + b't'
      + _py2_str(b'b')
      + b'\x87R'
      + b'('
      + _py2_int(1)
      + shape
      + dtype
      + b'\x89'
      + _py2_str(array.tobytes())
      + b'tb'
  )


def _py2_object(obj) -> bytes:
  if isinstance(obj, dict):
    items = b''.join(_py2_object(k) + _py2_object(v) for k, v in obj.items())
    return b'}' + (b'(' + items + b'u' if obj else b'')
  if isinstance(obj, list):
    return b']' + (b'(' + b''.join(_py2_object(v) for v in obj) + b'e' if obj else b'')
  if isinstance(obj, str):
    return _py2_str(obj.encode('latin1'))
  if isinstance(obj, (int, np.integer)):
    return _py2_int(int(obj))
  if isinstance(obj, np.ndarray):
    return _py2_array(obj)
  raise TypeError(type(obj))


def py2_pickle(obj) -> bytes:
  return b'\x80\x02' + _py2_object(obj) + b'.'


# ---------------------------------------------------------------- miniImageNet


def mini_images(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)


def write_gidaris(data_dir: Path, split_name: str, images, labels, catname2label):
  content = {'data': images, 'labels': list(labels), 'catname2label': catname2label}
  (data_dir / f'miniImageNet_category_split_{split_name}.pickle').write_bytes(py2_pickle(content))


def write_csv_split(data_dir: Path, rows, colours, split: str = 'train'):
  (data_dir / 'images').mkdir(exist_ok=True)
  for (filename, _), colour in zip(rows, colours):
    # Not 84x84, so the loader's resize runs; a flat colour survives JPEG and resizing.
    Image.new('RGB', (100, 90), tuple(colour)).save(
        data_dir / 'images' / filename, 'JPEG', quality=95
    )
  lines = ['filename,label'] + [f'{f},{label}' for f, label in rows]
  (data_dir / f'{split}.csv').write_text('\n'.join(lines) + '\n')


MINI_SPLITS = ('train', 'val', 'test')


def write_miniimagenet(
    data_dir: Path, fmt: str, classes: dict[str, int], per_class: int, seed: int = 0
) -> None:
  """A whole fake miniImageNet (train, val, test) in one published format.

  fmt: 'pickle' (Gidaris, Python 2, global labels with catname2label), 'csv' (Ravi csv and
  JPEGs in images/) or 'ren' (mini-imagenet-cache-*.pkl). classes: classes per split.
  """
  data_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  first = 0
  for split in MINI_SPLITS:
    wnids = [f'n{first + c:08d}' for c in range(classes[split])]
    labels = np.repeat(np.arange(len(wnids)), per_class)
    # A class-dependent mean over noise, so training has something to learn.
    means = rng.integers(40, 216, (len(wnids), 1, 1, 3))
    noise = rng.integers(-40, 40, (len(labels), 84, 84, 3))
    images = np.clip(means[labels] + noise, 0, 255).astype(np.uint8)
    if fmt == 'pickle':
      name = {'train': 'train_phase_train'}.get(split, split)
      catname2label = {w: first + c for c, w in enumerate(wnids)}
      write_gidaris(data_dir, name, images, first + labels, catname2label)
    elif fmt == 'ren':
      class_dict = {w: list(np.flatnonzero(labels == c)) for c, w in enumerate(wnids)}
      content = {'image_data': images, 'class_dict': class_dict}
      (data_dir / f'mini-imagenet-cache-{split}.pkl').write_bytes(pickle.dumps(content, protocol=4))
    elif fmt == 'csv':
      (data_dir / 'images').mkdir(exist_ok=True)
      lines = ['filename,label']
      for i, (image, label) in enumerate(zip(images, labels)):
        filename = f'{wnids[label]}{i:08d}.jpg'
        # 90x100, not 84x84, as the published images are not: the loader's resize runs.
        Image.fromarray(image).resize((100, 90)).save(data_dir / 'images' / filename, 'JPEG')
        lines.append(f'{filename},{wnids[label]}')
      (data_dir / f'{split}.csv').write_text('\n'.join(lines) + '\n')
    else:
      raise ValueError(fmt)
    first += len(wnids)


# ---------------------------------------------------------------- CIFAR

CIFAR10_NAMES = [
    'airplane',
    'automobile',
    'bird',
    'cat',
    'deer',
    'dog',
    'frog',
    'horse',
    'ship',
    'truck',
]


def cifar_rows(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(
    root: Path, per_batch: int = 2, n_test: int = 3, seed: int = 5
) -> tuple[np.ndarray, list[int]]:
  """cifar-10-batches-py/ with five training batches of `per_batch` images and a test batch."""
  folder = root / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  n = 5 * per_batch + n_test
  rows, labels = cifar_rows(n, seed), [i % 10 for i in range(n)]
  for b in range(5):
    batch = {
        'batch_label': f'training batch {b + 1} of 5',
        'labels': labels[per_batch * b : per_batch * (b + 1)],
        'data': rows[per_batch * b : per_batch * (b + 1)],
        'filenames': [f'x{i}.png' for i in range(per_batch)],
    }
    (folder / f'data_batch_{b + 1}').write_bytes(py2_pickle(batch))
  test = {
      'batch_label': 'testing batch 1 of 1',
      'labels': labels[5 * per_batch :],
      'data': rows[5 * per_batch :],
      'filenames': [f't{i + 1}.png' for i in range(n_test)],
  }
  (folder / 'test_batch').write_bytes(py2_pickle(test))
  meta = {'label_names': CIFAR10_NAMES, 'num_cases_per_batch': 10000, 'num_vis': 3072}
  (folder / 'batches.meta').write_bytes(py2_pickle(meta))
  return rows, labels


def tar_gz(folder: Path, tarball: Path):
  with tarfile.open(tarball, 'w:gz') as tar:
    tar.add(folder, arcname=folder.name)


def write_cifar100(root: Path, per_class: int = 1, tarball: bool = True) -> list[str]:
  """cifar-100-python/ (and its tarball) with the real fine and coarse class names.

  The CIFAR-FS and FC100 splits select classes by name, so the names and the fine-to-coarse
  map must be CIFAR-100's own. Train and test each hold `per_class` images of every class.
  """
  fine = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)
  coarse = sorted(CIFAR100_SUPERCLASSES)
  coarse_of = {f: coarse.index(s) for s, names in CIFAR100_SUPERCLASSES.items() for f in names}
  folder = root / 'cifar-100-python'
  folder.mkdir(parents=True)
  for part, seed in (('train', 6), ('test', 7)):
    content = {
        'filenames': [f'{n}.png' for n in fine] * per_class,
        'batch_label': part,
        'fine_labels': list(range(100)) * per_class,
        'coarse_labels': [coarse_of[f] for f in fine] * per_class,
        'data': cifar_rows(100 * per_class, seed),
    }
    (folder / part).write_bytes(py2_pickle(content))
  (folder / 'meta').write_bytes(
      py2_pickle({'fine_label_names': fine, 'coarse_label_names': coarse})
  )
  if tarball:
    tar_gz(folder, root / 'cifar-100-python.tar.gz')
  return fine


# ---------------------------------------------------------------- Fashion-MNIST


def _write_idx(path: Path, array: np.ndarray) -> None:
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_fashion_mnist(data_dir: Path, n_train: int, n_test: int, seed: int = 0) -> None:
  """The four gzipped IDX files of Fashion-MNIST, balanced over the 10 classes."""
  data_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for stem, n in (('train', n_train), ('t10k', n_test)):
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.clip(labels[:, None, None] * 20 + rng.integers(0, 60, (n, 28, 28)), 0, 255)
    _write_idx(data_dir / f'{stem}-images-idx3-ubyte.gz', images)
    _write_idx(data_dir / f'{stem}-labels-idx1-ubyte.gz', labels)
