"""Train/test sets and labelled subsets of the semi-supervised benchmarks."""

import ml_collections
import numpy as np

from groundwork import data as gdata

DATASETS = ('fashion_mnist', 'digits', 'cifar10', 'cifar100', 'miniimagenet')
# The label-propagation reference splits each of miniImageNet's 100 classes
# into 500 training and 100 test images.
MINIIMAGENET_TRAIN_PER_CLASS = 500


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f'config.dataset={name!r} is not one of {list(DATASETS)}.')


def _miniimagenet_ssl(data_dir: str) -> tuple[gdata.ImageDataset, gdata.ImageDataset]:
  """All 100 classes of miniImageNet, the first 500 images of each to train, the rest to test."""
  splits = [gdata.load_miniimagenet(data_dir, split) for split in ('train', 'val', 'test')]
  images, labels, names = [], [], []
  for split in splits:
    images.append(split.images)
    labels.append(split.labels + len(names))
    names += split.class_names
  images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
  train_idx, test_idx = [], []
  for c in range(len(names)):
    members = np.flatnonzero(labels == c)
    train_idx.append(members[:MINIIMAGENET_TRAIN_PER_CLASS])
    test_idx.append(members[MINIIMAGENET_TRAIN_PER_CLASS:])
  full = gdata.ImageDataset(images, labels, names)
  return full.subset(np.concatenate(train_idx)), full.subset(np.concatenate(test_idx))


def load(config: ml_collections.ConfigDict) -> tuple[gdata.ImageDataset, gdata.ImageDataset]:
  """(train, test) of `config.dataset` read from `config.data_dir`."""
  check_dataset_name(config.dataset)
  if config.dataset == 'fashion_mnist':
    train, test = gdata.load_fashion_mnist(config.data_dir)
  elif config.dataset == 'digits':
    train, test = gdata.load_digits(config.seed, config.get('test_fraction', 0.2))
  elif config.dataset == 'cifar10':
    train, test = gdata.load_cifar10(config.data_dir)
  elif config.dataset == 'cifar100':
    train, test = gdata.load_cifar100(config.data_dir)
  else:
    train, test = _miniimagenet_ssl(config.data_dir)
  if config.get('train_subset'):
    # Runs sized for a small CPU: a class-balanced, seeded subset of the training images.
    train = train.subset(
        gdata.balanced_labeled_indices(train.labels, config.train_subset, config.seed + 1)
    )
  return train, test


def labeled_indices(config: ml_collections.ConfigDict, train: gdata.ImageDataset) -> np.ndarray:
  """Indices of the labelled training images: a published label file, or a seeded balanced draw."""
  if config.label_file:
    if train.filenames is None:
      raise ValueError(
          f'config.label_file={config.label_file!r} names images by file, but '
          f'{config.dataset} was read without file names (tfds); use the '
          'official python archive.'
      )
    indices, _ = gdata.read_reference_labels(
        config.label_file, train.filenames, train.class_names, train.labels
    )
    return np.sort(indices)
  if config.labels > len(train.labels):
    raise ValueError(
        f'config.labels={config.labels} exceeds the {len(train.labels)} training ' 'images.'
    )
  return gdata.balanced_labeled_indices(train.labels, config.labels, config.seed)


def split_indices(
    config: ml_collections.ConfigDict, train: gdata.ImageDataset
) -> tuple[np.ndarray, np.ndarray]:
  """(labelled, unlabelled) indices of the training images."""
  labeled = labeled_indices(config, train)
  unlabeled = np.setdiff1d(np.arange(len(train.labels)), labeled)
  if len(unlabeled) == 0:
    raise ValueError(
        f'config.labels={config.labels} labels every training image; nothing is ' 'left unlabelled.'
    )
  return labeled, unlabeled
