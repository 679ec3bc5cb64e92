"""miniImageNet (Ravi & Larochelle split: 64/16/20 classes, 600 images, 84x84).

Reads whichever of the three published formats `data_dir` holds:
  (a) Gidaris / MetaOptNet / RFS pickles
      miniImageNet_category_split_{train_phase_train,train_phase_val,
      train_phase_test,val,test}.pickle: Python 2 dicts with 'data'
      (uint8 N x 84 x 84 x 3) and 'labels', optionally 'catname2label';
  (b) the Ravi csv files {train,val,test}.csv ('filename,label' rows) with the
      images in images/, resized to 84x84 on first read;
  (c) Ren et al.'s mini-imagenet-cache-{train,val,test}.pkl: dicts with
      'image_data' (uint8 N x 84 x 84 x 3) and 'class_dict' (class -> indices).
The first read writes a .npy cache in data_dir/groundwork_cache/.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from groundwork.data.cache import read_cache, source_signature, write_cache
from groundwork.data.dataset import ImageDataset, check_image_array, dense_labels
from groundwork.data.legacy_pickle import as_text, read_legacy_pickle, str_keys

IMAGE_SIZE = 84
SPLITS = ('train', 'val', 'test', 'train_phase_train', 'train_phase_val', 'train_phase_test')
CACHE_DIRNAME = 'groundwork_cache'


def _gidaris_file(split: str) -> str:
  name = {'train': 'train_phase_train'}.get(split, split)
  return f'miniImageNet_category_split_{name}.pickle'


def _ren_file(split: str) -> str:
  return f'mini-imagenet-cache-{split}.pkl'


def _read_gidaris(path: Path) -> ImageDataset:
  with open(path, 'rb') as f:
    content = str_keys(read_legacy_pickle(str(path), f), str(path), ('data', 'labels'))
  images = check_image_array(
      content['data'], f'{path} ["data"]', height=IMAGE_SIZE, width=IMAGE_SIZE, channels=3
  )
  raw = np.asarray(content['labels'])
  if raw.shape != (len(images),) or not np.issubdtype(raw.dtype, np.integer):
    raise ValueError(
        f'{path}: "labels" must hold one integer per image ({len(images)}), '
        f'found {raw.dtype} {raw.shape}.'
    )
  labels, values = dense_labels(raw)
  names = {v: str(v) for v in values}
  if 'catname2label' in content:
    for name, value in content['catname2label'].items():
      if value in names:
        names[value] = as_text(name)
  return ImageDataset(images=images, labels=labels, class_names=[names[v] for v in values])


def _read_ren(path: Path) -> ImageDataset:
  with open(path, 'rb') as f:
    content = str_keys(read_legacy_pickle(str(path), f), str(path), ('image_data', 'class_dict'))
  images = check_image_array(
      content['image_data'],
      f'{path} ["image_data"]',
      height=IMAGE_SIZE,
      width=IMAGE_SIZE,
      channels=3,
  )
  class_dict = {as_text(k): np.asarray(v, np.int64) for k, v in content['class_dict'].items()}
  class_names = sorted(class_dict)
  labels = np.full(len(images), -1, np.int32)
  for label, name in enumerate(class_names):
    indices = class_dict[name]
    if indices.size and (indices.min() < 0 or indices.max() >= len(images)):
      raise ValueError(f'{path}: class_dict[{name!r}] has indices outside 0..{len(images) - 1}.')
    if np.any(labels[indices] >= 0):
      raise ValueError(f'{path}: class_dict[{name!r}] repeats images of another class.')
    labels[indices] = label
  if np.any(labels < 0):
    raise ValueError(
        f'{path}: {int(np.sum(labels < 0))} images belong to no class of '
        f'class_dict; the file is incomplete.'
    )
  return ImageDataset(images=images, labels=labels, class_names=class_names)


def _read_csv(path: Path, image_dir: Path) -> ImageDataset:
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  if not rows or [c.strip() for c in rows[0]] != ['filename', 'label']:
    raise ValueError(
        f'{path}: expected the header "filename,label", found '
        f'{rows[0] if rows else "an empty file"}.'
    )
  filenames, wnids = [], []
  for line_number, row in enumerate(rows[1:], 2):
    if len(row) != 2:
      raise ValueError(f'{path}, line {line_number}: expected "filename,label", found {row}.')
    filenames.append(row[0].strip())
    wnids.append(row[1].strip())
  images = np.empty((len(filenames), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for i, filename in enumerate(filenames):
    image_path = image_dir / filename
    if not image_path.is_file():
      raise FileNotFoundError(f'{path}, line {i + 2}: image {image_path} does not exist.')
    try:
      with Image.open(image_path) as image:
        rgb = image.convert('RGB')
        if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
          rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
        images[i] = np.asarray(rgb)
    except (OSError, ValueError, SyntaxError) as e:
      raise ValueError(
          f'{image_path}: cannot decode the image ({e}); the file is ' f'truncated or corrupt.'
      ) from None
  labels, class_names = dense_labels(wnids)
  return ImageDataset(images=images, labels=labels, class_names=class_names, filenames=filenames)


def load_miniimagenet(data_dir: str | os.PathLike, split: str, cache: bool = True) -> ImageDataset:
  """One split of miniImageNet from any of the three published formats.

  Args:
    data_dir: directory holding the published files.
    split: 'train', 'val' or 'test'; the Gidaris pickles also offer
      'train_phase_val' and 'train_phase_test' (held-out images of the 64
      training classes) and 'train_phase_train' (= 'train').
    cache: read and write the .npy cache in data_dir/groundwork_cache/.

  Returns:
    ImageDataset, uint8 [N, 84, 84, 3], labels 0..C-1 in sorted class order.
  """
  if split not in SPLITS:
    raise ValueError(f'miniImageNet split {split!r} is unknown; use one of {SPLITS}.')
  data_dir = Path(data_dir).expanduser()
  base = 'train' if split == 'train_phase_train' else split
  gidaris, ren = data_dir / _gidaris_file(split), data_dir / _ren_file(base)
  csv_path, image_dir = data_dir / f'{base}.csv', data_dir / 'images'
  if gidaris.is_file():
    source, sources, read = 'pickle', [gidaris], lambda: _read_gidaris(gidaris)
  elif split.startswith('train_phase_') and split != 'train_phase_train':
    raise FileNotFoundError(
        f'miniImageNet split {split!r} exists only in the Gidaris ' f'pickles; {gidaris} is absent.'
    )
  elif ren.is_file():
    source, sources, read = 'ren', [ren], lambda: _read_ren(ren)
  elif csv_path.is_file() and image_dir.is_dir():
    source, sources, read = 'csv', [csv_path], lambda: _read_csv(csv_path, image_dir)
  else:
    raise FileNotFoundError(
        f'No miniImageNet {split!r} split in {data_dir.resolve()}: expected one of '
        f'{gidaris.name} (Gidaris/MetaOptNet pickles), {ren.name} (Ren et al.), or '
        f'{csv_path.name} with an images/ folder (Ravi & Larochelle csv).'
    )

  cache_dir, cache_name = data_dir / CACHE_DIRNAME, f'miniimagenet_{split}_{source}'
  signature = source_signature(sources)
  if cache:
    cached = read_cache(cache_dir, cache_name, signature)
    if cached is not None:
      return cached
  dataset = read()
  if cache:
    write_cache(cache_dir, cache_name, signature, dataset)
  return dataset
