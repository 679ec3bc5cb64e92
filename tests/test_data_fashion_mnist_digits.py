"""Fashion-MNIST IDX files (fixtures, the real files, a tfds copy), digits, ImageDataset."""

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from groundwork.data import ImageDataset, load_digits, load_fashion_mnist

# ---------------------------------------------------------------- Fashion-MNIST


def _idx(array: np.ndarray, magic: int | None = None) -> bytes:
  magic = 0x800 + array.ndim if magic is None else magic
  return struct.pack('>I', magic) + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()


def _write_fmnist(data_dir: Path, n_train=5, n_test=3):
  data_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(8)
  arrays = {
      'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      'train-labels-idx1-ubyte': np.arange(n_train, dtype=np.uint8) % 10,
      't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      't10k-labels-idx1-ubyte': np.arange(n_test, dtype=np.uint8)[::-1].copy(),
  }
  for stem, array in arrays.items():
    (data_dir / f'{stem}.gz').write_bytes(gzip.compress(_idx(array)))
  return arrays


def test_fashion_mnist_idx_round_trip(tmp_path):
  arrays = _write_fmnist(tmp_path)
  train, test = load_fashion_mnist(tmp_path)
  np.testing.assert_array_equal(train.images[..., 0], arrays['train-images-idx3-ubyte'])
  np.testing.assert_array_equal(test.labels, [2, 1, 0])
  assert train.images.shape == (5, 28, 28, 1) and train.class_names[9] == 'Ankle boot'


@pytest.mark.parametrize(
    'stem, payload, message',
    [
        (
            'train-labels-idx1-ubyte',
            _idx(np.zeros((5, 28, 28), np.uint8)),
            r'train-labels-idx1-ubyte\.gz: wrong IDX magic number 0x00000803, expected 0x00000801',
        ),
        (
            't10k-images-idx3-ubyte',
            _idx(np.zeros((3, 28, 28), np.uint8))[:-10],
            r't10k-images-idx3-ubyte\.gz: the header announces shape \(3, 28, 28\)',
        ),
        (
            't10k-images-idx3-ubyte',
            _idx(np.zeros((3, 27, 29), np.uint8)),
            r't10k-images-idx3-ubyte\.gz: wrong shape \(3, 27, 29\)',
        ),
        (
            'train-labels-idx1-ubyte',
            _idx(np.zeros(4, np.uint8)),
            r'has 4 labels but .*train-images-idx3-ubyte\.gz has 5 images',
        ),
    ],
)
def test_fashion_mnist_bad_idx(tmp_path, stem, payload, message):
  _write_fmnist(tmp_path)
  (tmp_path / f'{stem}.gz').write_bytes(gzip.compress(payload))
  with pytest.raises(ValueError, match=message):
    load_fashion_mnist(tmp_path)


def test_fashion_mnist_truncated_gzip(tmp_path):
  _write_fmnist(tmp_path)
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  path.write_bytes(path.read_bytes()[:-50])
  with pytest.raises(ValueError, match=r'train-images-idx3-ubyte\.gz: broken gzip stream'):
    load_fashion_mnist(tmp_path)
  with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist'):
    load_fashion_mnist(tmp_path / 'nowhere')


def test_fashion_mnist_real_files():
  data_dir = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
  if not Path(data_dir, 'train-images-idx3-ubyte.gz').is_file():
    pytest.skip(
        f'Fashion-MNIST IDX files not in {data_dir} (apt-get install dataset-fashion-mnist '
        f'or set FASHION_MNIST_DIR).'
    )
  train, test = load_fashion_mnist(data_dir)
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  assert np.all(np.bincount(train.labels) == 6000) and np.all(np.bincount(test.labels) == 1000)


# ---------------------------------------------------------------- digits, ImageDataset


def test_digits_seeded_stratified_split():
  train, test = load_digits(seed=3, test_fraction=0.25)
  assert len(train) + len(test) == 1797 and train.images.shape[1:] == (8, 8, 1)
  assert train.images.max() == 255 and train.images.min() == 0
  counts = np.bincount(train.labels) + np.bincount(test.labels)
  np.testing.assert_array_equal(np.bincount(test.labels), np.round(0.25 * counts))
  again, _ = load_digits(seed=3, test_fraction=0.25)
  np.testing.assert_array_equal(again.images, train.images)
  other, _ = load_digits(seed=4, test_fraction=0.25)
  assert not np.array_equal(other.images, train.images)


def test_image_dataset_checks_and_select_classes():
  images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2, 1)
  dataset = ImageDataset(images, np.array([0, 2, 1, 2], np.int32), ['a', 'b', 'c'], list('wxyz'))
  picked = dataset.select_classes(['c', 'a'])
  np.testing.assert_array_equal(picked.labels, [1, 0, 0])
  assert picked.filenames == ['w', 'x', 'z'] and picked.class_names == ['c', 'a']
  with pytest.raises(ValueError, match='labels must lie in 0..1'):
    ImageDataset(images, np.array([0, 2, 1, 2], np.int32), ['a', 'b'])
  with pytest.raises(ValueError, match=r'\[.d.\] are not in this dataset'):
    dataset.select_classes(['d'])


def test_fashion_mnist_from_prepared_tfds_copy(tmp_path):
  # tfds needs importlib_resources to prepare (not to read) a dataset.
  pytest.importorskip(
      'importlib_resources',
      reason='tensorflow-datasets cannot write the '
      'fixture without the importlib_resources package',
  )
  # TensorFlow is an optional extra: without it a tfds copy can be neither written nor read.
  tf = pytest.importorskip('tensorflow')
  tfds = pytest.importorskip('tensorflow_datasets')
  images = np.random.default_rng(9).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  features = tfds.features.FeaturesDict(
      {
          'image': tfds.features.Image(shape=(28, 28, 1)),
          'label': tfds.features.ClassLabel(names=['T-shirt/top', 'Trouser', 'Pullover']),
      }
  )
  splits = {
      'train': tf.data.Dataset.from_tensor_slices({'image': images, 'label': [0, 1, 2, 1]}),
      'test': tf.data.Dataset.from_tensor_slices({'image': images[:1], 'label': [2]}),
  }
  tfds.dataset_builders.store_as_tfds_dataset(
      name='fashion_mnist',
      version='3.0.1',
      features=features,
      split_datasets=splits,
      data_dir=str(tmp_path),
      disable_shuffling=True,
  )
  train, test = load_fashion_mnist(tmp_path)
  np.testing.assert_array_equal(train.images, images)
  np.testing.assert_array_equal(train.labels, [0, 1, 2, 1])
  assert train.class_names == ['T-shirt/top', 'Trouser', 'Pullover'] and len(test) == 1


def test_tfds_copy_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
  version_dir = tmp_path / 'fashion_mnist' / '3.0.1'
  version_dir.mkdir(parents=True)
  (version_dir / 'dataset_info.json').write_text('{}')
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # `import tensorflow` now fails.
  with pytest.raises(ImportError, match='is a tensorflow-datasets copy') as error:
    load_fashion_mnist(tmp_path)
  assert str(version_dir) in str(error.value)
  assert "pip install -e '.[tensorflow]' (or make install EXTRAS=tensorflow)" in str(error.value)
