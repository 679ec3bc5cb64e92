"""Round trips of the published miniImageNet and CIFAR formats on tiny fixtures."""

import pickle
import shutil

import numpy as np
import pytest

from groundwork.data import (
    CIFAR100_SUPERCLASSES,
    CIFAR_FS_SPLITS,
    FC100_SPLITS,
    load_cifar10,
    load_cifar100,
    load_cifar_fs,
    load_fc100,
    load_miniimagenet,
)
from groundwork.data import miniimagenet as miniimagenet_module
from tests.fake_data import CIFAR10_NAMES, py2_pickle
from tests.fake_data import mini_images as _mini_images
from tests.fake_data import tar_gz as _tar_gz
from tests.fake_data import write_cifar10 as _write_cifar10
from tests.fake_data import write_cifar100 as _cifar100_fixture
from tests.fake_data import write_csv_split as _write_csv_split
from tests.fake_data import write_gidaris as _write_gidaris


def test_py2_fixture_needs_latin1():
  raw = py2_pickle({'data': np.arange(200, 256, dtype=np.uint8), 'labels': [1, 300]})
  with pytest.raises(UnicodeDecodeError):
    pickle.loads(raw)
  loaded = pickle.loads(raw, encoding='latin1')
  np.testing.assert_array_equal(loaded['data'], np.arange(200, 256, dtype=np.uint8))
  assert loaded['labels'] == [1, 300]


# ---------------------------------------------------------------- miniImageNet


def test_miniimagenet_gidaris_pickle_round_trip_and_cache(tmp_path, monkeypatch):
  images = _mini_images(6, 0)
  _write_gidaris(
      tmp_path,
      'val',
      images,
      [70, 64, 70, 64, 65, 65],
      {'n03535780': 64, 'n02981792': 65, 'n09256479': 70},
  )
  dataset = load_miniimagenet(tmp_path, 'val')
  np.testing.assert_array_equal(dataset.images, images)
  np.testing.assert_array_equal(dataset.labels, [2, 0, 2, 0, 1, 1])
  assert dataset.class_names == ['n03535780', 'n02981792', 'n09256479']
  assert sorted(p.name for p in (tmp_path / 'groundwork_cache').iterdir()) == [
      'miniimagenet_val_pickle.images.npy',
      'miniimagenet_val_pickle.json',
      'miniimagenet_val_pickle.labels.npy',
  ]

  def no_decoding(path):
    raise AssertionError(f'{path} decoded although the cache is valid')

  monkeypatch.setattr(miniimagenet_module, '_read_gidaris', no_decoding)
  cached = load_miniimagenet(tmp_path, 'val')
  np.testing.assert_array_equal(cached.images, images)
  np.testing.assert_array_equal(cached.labels, dataset.labels)
  assert cached.class_names == dataset.class_names


def test_miniimagenet_train_phase_splits_read_their_pickles(tmp_path):
  _write_gidaris(tmp_path, 'train_phase_train', _mini_images(2, 1), [3, 5], {})
  _write_gidaris(tmp_path, 'train_phase_test', _mini_images(3, 2), [5, 3, 3], {})
  train = load_miniimagenet(tmp_path, 'train', cache=False)
  held_out = load_miniimagenet(tmp_path, 'train_phase_test', cache=False)
  assert (len(train), len(held_out)) == (2, 3)
  assert train.class_names == held_out.class_names == ['3', '5']
  np.testing.assert_array_equal(held_out.labels, [1, 0, 0])


def test_miniimagenet_ren_pickle(tmp_path):
  images = _mini_images(5, 3)
  content = {'image_data': images, 'class_dict': {'n0b': [0, 3], 'n0a': [1, 2, 4]}}
  (tmp_path / 'mini-imagenet-cache-test.pkl').write_bytes(pickle.dumps(content, protocol=4))
  dataset = load_miniimagenet(tmp_path, 'test')
  np.testing.assert_array_equal(dataset.images, images)
  np.testing.assert_array_equal(dataset.labels, [1, 0, 0, 1, 0])
  assert dataset.class_names == ['n0a', 'n0b']


def test_miniimagenet_csv_resized_and_cached(tmp_path):
  rows = [
      ('n0153282900000005.jpg', 'n01532829'),
      ('n0153282900000006.jpg', 'n01532829'),
      ('n0155887100000001.jpg', 'n01558993'),
  ]
  colours = [(200, 30, 10), (20, 220, 40), (15, 25, 230)]
  _write_csv_split(tmp_path, rows, colours)
  dataset = load_miniimagenet(tmp_path, 'train')
  assert dataset.images.shape == (3, 84, 84, 3)
  np.testing.assert_allclose(dataset.images.reshape(3, -1, 3).mean(axis=1), colours, atol=3)
  np.testing.assert_array_equal(dataset.labels, [0, 0, 1])
  assert dataset.class_names == ['n01532829', 'n01558993']
  assert dataset.filenames == [r[0] for r in rows]
  # The cache serves the next read even without the images ...
  for filename, _ in rows:
    (tmp_path / 'images' / filename).unlink()
  np.testing.assert_array_equal(load_miniimagenet(tmp_path, 'train').images, dataset.images)
  # ... until the csv changes, which makes the loader decode again.
  (tmp_path / 'train.csv').write_text('filename,label\nn0153282900000005.jpg,n01532829\n')
  with pytest.raises(FileNotFoundError, match='n0153282900000005.jpg does not exist'):
    load_miniimagenet(tmp_path, 'train')


def test_miniimagenet_truncated_pickle_names_file_and_caches_nothing(tmp_path):
  _write_gidaris(tmp_path, 'test', _mini_images(4, 4), [0, 1, 0, 1], {})
  path = tmp_path / 'miniImageNet_category_split_test.pickle'
  path.write_bytes(path.read_bytes()[:20000])
  with pytest.raises(
      ValueError, match=r'split_test\.pickle: the pickle ends early; the file is truncated'
  ):
    load_miniimagenet(tmp_path, 'test')
  assert not (tmp_path / 'groundwork_cache').exists()


def test_miniimagenet_wrong_shape_and_garbage_are_reported(tmp_path):
  content = {'data': np.zeros((2, 32, 32, 3), np.uint8), 'labels': [0, 1]}
  (tmp_path / 'miniImageNet_category_split_val.pickle').write_bytes(py2_pickle(content))
  with pytest.raises(
      ValueError,
      match=r'split_val\.pickle \["data"\]: expected uint8 images '
      r'of shape Nx84x84x3, found uint8 \(2, 32, 32, 3\)',
  ):
    load_miniimagenet(tmp_path, 'val')
  (tmp_path / 'mini-imagenet-cache-test.pkl').write_bytes(b'this is not a pickle at all')
  with pytest.raises(ValueError, match=r'cache-test\.pkl: not a readable pickle'):
    load_miniimagenet(tmp_path, 'test')
  assert not (tmp_path / 'groundwork_cache').exists()


def test_miniimagenet_corrupt_jpeg_names_image_and_caches_nothing(tmp_path):
  rows = [('a.jpg', 'n1'), ('b.jpg', 'n2')]
  _write_csv_split(tmp_path, rows, [(1, 2, 3), (4, 5, 6)])
  (tmp_path / 'images' / 'b.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
  with pytest.raises(ValueError, match=r'b\.jpg: cannot decode the image'):
    load_miniimagenet(tmp_path, 'train')
  assert not (tmp_path / 'groundwork_cache').exists()


def test_miniimagenet_missing_split_lists_the_three_formats(tmp_path):
  with pytest.raises(
      FileNotFoundError,
      match='miniImageNet_category_split_val.pickle.*' 'mini-imagenet-cache-val.pkl.*val.csv',
  ):
    load_miniimagenet(tmp_path, 'val')
  with pytest.raises(ValueError, match='unknown'):
    load_miniimagenet(tmp_path, 'validation')


# ---------------------------------------------------------------- CIFAR


def test_cifar10_folder_and_tarball_agree(tmp_path):
  rows, labels = _write_cifar10(tmp_path / 'extracted')
  train, test = load_cifar10(tmp_path / 'extracted')
  assert (train.images.shape, test.images.shape) == ((10, 32, 32, 3), (3, 32, 32, 3))
  np.testing.assert_array_equal(train.labels, labels[:10])
  # Rows hold the red plane, then green, then blue, each row-major.
  assert train.images[3, 5, 7, 2] == rows[3][2 * 1024 + 5 * 32 + 7]
  assert test.images[1, 31, 0, 1] == rows[11][1024 + 31 * 32]
  assert train.class_names == CIFAR10_NAMES
  assert train.filenames[:3] == ['0_airplane.png', '1_automobile.png', '2_bird.png']
  assert test.filenames[0] == '0_airplane.png'
  # The same data read straight from the published tarball.
  (tmp_path / 'tar').mkdir()
  _tar_gz(
      tmp_path / 'extracted' / 'cifar-10-batches-py', tmp_path / 'tar' / 'cifar-10-python.tar.gz'
  )
  from_tar, _ = load_cifar10(tmp_path / 'tar')
  np.testing.assert_array_equal(from_tar.images, train.images)
  assert from_tar.filenames == train.filenames
  # data_dir may also be the extracted folder itself.
  direct, _ = load_cifar10(tmp_path / 'extracted' / 'cifar-10-batches-py')
  np.testing.assert_array_equal(direct.labels, train.labels)


def test_cifar10_bad_inputs_name_the_file(tmp_path):
  _write_cifar10(tmp_path / 'x')
  tarball = tmp_path / 'cifar-10-python.tar.gz'
  _tar_gz(tmp_path / 'x' / 'cifar-10-batches-py', tarball)
  tarball.write_bytes(tarball.read_bytes()[: len(tarball.read_bytes()) // 2])
  with pytest.raises(ValueError, match=r'cifar-10-python\.tar\.gz.*truncated'):
    load_cifar10(tmp_path)
  folder = tmp_path / 'x' / 'cifar-10-batches-py'
  (folder / 'data_batch_3').write_bytes(b'\x80\x02}q\x00(U\x04data')
  with pytest.raises(ValueError, match=r'data_batch_3: the pickle ends early'):
    load_cifar10(folder)
  (folder / 'data_batch_3').write_bytes(
      py2_pickle({'data': np.zeros((2, 1024), np.uint8), 'labels': [0, 1]})
  )
  with pytest.raises(ValueError, match=r'data_batch_3: "data" must be uint8 \[N, 3072\]'):
    load_cifar10(folder)
  with pytest.raises(FileNotFoundError, match='cifar-10-python.tar.gz'):
    load_cifar10(tmp_path / 'empty')


def test_cifar_few_shot_class_lists():
  fine = {name for names in CIFAR100_SUPERCLASSES.values() for name in names}
  assert len(CIFAR100_SUPERCLASSES) == 20 and len(fine) == 100
  sizes = [len(CIFAR_FS_SPLITS[s]) for s in ('train', 'val', 'test')]
  assert sizes == [64, 16, 20]
  assert set().union(*map(set, CIFAR_FS_SPLITS.values())) == fine
  assert [len(FC100_SPLITS[s]) for s in ('train', 'val', 'test')] == [12, 4, 4]
  assert set().union(*map(set, FC100_SPLITS.values())) == set(CIFAR100_SUPERCLASSES)


def test_cifar100_and_few_shot_splits_from_tarball(tmp_path):
  fine = _cifar100_fixture(tmp_path / 'data')
  shutil.rmtree(tmp_path / 'data' / 'cifar-100-python')  # Only the tarball is left.
  train, test = load_cifar100(tmp_path / 'data')
  assert train.class_names == fine and len(train) == len(test) == 100
  fs_test = load_cifar_fs(tmp_path / 'data', 'test')
  # Train and test images of CIFAR-100 are pooled: 2 images per class here (600 in the real set).
  assert fs_test.class_names == sorted(CIFAR_FS_SPLITS['test'])
  assert len(fs_test) == 40 and np.all(np.bincount(fs_test.labels) == 2)
  whale = fs_test.class_names.index('whale')
  np.testing.assert_array_equal(
      fs_test.images[fs_test.labels == whale][0], train.images[fine.index('whale')]
  )
  fc_val = load_fc100(tmp_path / 'data', 'val')
  assert fc_val.num_classes == 20 and 'hamster' in fc_val.class_names
  assert 'whale' not in fc_val.class_names
  with pytest.raises(ValueError, match='unknown'):
    load_fc100(tmp_path / 'data', 'validation')
