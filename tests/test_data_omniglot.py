"""Omniglot and Lake's runs read from the real official zips (OMNIGLOT_DIR)."""

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from groundwork.data import (
    OMNIGLOT_FILES,
    lake_error_rate,
    load_lake_runs,
    load_omniglot,
    omniglot_alphabet_of,
    omniglot_file,
)
from groundwork.data import omniglot as omniglot_module

OMNIGLOT_DIR = Path(
    os.environ.get(
        'OMNIGLOT_DIR', Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'omniglot'
    )
)
SMALL1, SMALL2 = 'images_background_small1.zip', 'images_background_small2.zip'


@pytest.fixture(scope='module')
def data_dir() -> Path:
  needed = [SMALL1, SMALL2, 'all_runs.zip']
  missing = [f for f in needed if not (OMNIGLOT_DIR / f).is_file()]
  if missing:
    pytest.skip(
        f'Omniglot files {missing} not in {OMNIGLOT_DIR}; set OMNIGLOT_DIR to the '
        f'directory holding the official zips.'
    )
  return OMNIGLOT_DIR


@pytest.fixture(scope='module')
def small1(data_dir):
  return load_omniglot(data_dir, [SMALL1], image_size=28, download=False)


@pytest.fixture(scope='module')
def small2(data_dir):
  return load_omniglot(data_dir, [SMALL2], image_size=28, download=False)


@pytest.fixture(scope='module')
def both(data_dir):
  return load_omniglot(data_dir, [SMALL1, SMALL2], image_size=28, download=False)


def _drawers(dataset, label):
  return sorted(dataset.filenames[i][-6:-4] for i in np.flatnonzero(dataset.labels == label))


def test_real_counts(small1, small2, both):
  assert small1.num_classes == 136 and len(small1) == 136 * 20
  assert small2.num_classes == 156 and len(small2) == 156 * 20
  assert both.num_classes == 242 and len(both) == 242 * 20
  assert set(both.class_names) == set(small1.class_names) | set(small2.class_names)
  assert len({omniglot_alphabet_of(c) for c in both.class_names}) == 8
  expected_drawers = [f'{d:02d}' for d in range(1, 21)]
  assert all(_drawers(both, label) == expected_drawers for label in range(both.num_classes))


def test_shared_alphabets_are_deduplicated(small1, small2, both):
  shared = sorted(set(small1.class_names) & set(small2.class_names))
  assert {omniglot_alphabet_of(c) for c in shared} == {'Greek', 'Latin'}
  assert len(shared) == 136 + 156 - 242
  for name in shared[::10]:
    in_both = both.images[both.labels == both.class_names.index(name)]
    in_small2 = small2.images[small2.labels == small2.class_names.index(name)]
    np.testing.assert_array_equal(in_both, in_small2)  # The archives agree byte for byte.
  first = both.filenames[np.flatnonzero(both.labels == both.class_names.index(shared[0]))[0]]
  assert first.startswith('images_background_small1/')  # The first archive given wins.


def test_strokes_are_foreground(both):
  assert both.images.shape[1:] == (28, 28, 1) and both.images.dtype == np.uint8
  # Characters are thin strokes on an empty page: the page (most pixels) is 0.
  assert np.median(both.images) == 0 and both.images.max() == 255
  assert 10 < both.images.mean() < 40
  assert omniglot_alphabet_of('Japanese_(katakana)/character07') == 'Japanese_(katakana)'


def test_lake_runs(data_dir):
  runs = load_lake_runs(data_dir, image_size=28, download=False)
  assert len(runs) == 20
  for run in runs:
    assert run.train_images.shape == run.test_images.shape == (20, 28, 28, 1)
    # Each of the 20 classes is the truth of exactly one test item.
    np.testing.assert_array_equal(np.sort(run.test_targets), np.arange(20))
  # run01/class_labels.txt: item01 -> class08, item02 -> class09, item03 -> class02.
  np.testing.assert_array_equal(runs[0].test_targets[:3], [7, 8, 1])
  assert lake_error_rate(runs, [r.test_targets for r in runs]) == 0.0
  # Always answering class01 is right once per run: 20 of 400.
  assert lake_error_rate(runs, [np.zeros(20, int)] * 20) == pytest.approx(380 / 400)


def test_missing_file_names_file_directory_and_url(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    load_omniglot(tmp_path, ['images_evaluation'], download=False)
  message = str(error.value)
  assert 'images_evaluation.zip' in message and str(tmp_path) in message
  assert (
      'https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip' in message
  )


def test_download_checks_sha256(data_dir, tmp_path, monkeypatch):
  url, sha256 = OMNIGLOT_FILES[SMALL1]
  local = (data_dir / SMALL1).resolve().as_uri()
  monkeypatch.setitem(omniglot_module.OMNIGLOT_FILES, SMALL1, (local, sha256))
  (tmp_path / 'fresh').mkdir()
  path = omniglot_file(tmp_path / 'fresh', SMALL1)
  assert path.read_bytes() == (data_dir / SMALL1).read_bytes()
  monkeypatch.setitem(omniglot_module.OMNIGLOT_FILES, SMALL1, (local, '0' * 64))
  (tmp_path / 'bad').mkdir()
  with pytest.raises(FileNotFoundError, match=f'download failed.*sha256 {sha256[:12]}'):
    omniglot_file(tmp_path / 'bad', SMALL1)
  assert list((tmp_path / 'bad').iterdir()) == []  # Nothing kept from a bad download.


def test_a_missing_data_dir_is_never_created(data_dir, tmp_path, monkeypatch):
  local = (data_dir / SMALL1).resolve().as_uri()
  monkeypatch.setitem(omniglot_module.OMNIGLOT_FILES, SMALL1, (local, OMNIGLOT_FILES[SMALL1][1]))
  typo = tmp_path / 'omniglott'
  with pytest.raises(FileNotFoundError, match='omniglott and that directory does not exist'):
    omniglot_file(typo, SMALL1)
  assert not typo.exists()


def test_truncated_zip_is_reported(data_dir, tmp_path):
  (tmp_path / SMALL1).write_bytes((data_dir / SMALL1).read_bytes()[:400_000])
  with pytest.raises(ValueError, match=rf'{SMALL1}: not a readable zip archive .*truncated'):
    load_omniglot(tmp_path, [SMALL1], download=False)


def test_corrupt_member_is_reported(data_dir, tmp_path):
  raw = bytearray((data_dir / SMALL1).read_bytes())
  with zipfile.ZipFile(data_dir / SMALL1) as archive:
    info = next(i for i in archive.infolist() if i.filename.endswith('0108_01.png'))
  start = info.header_offset + 30 + len(info.filename.encode()) + 40
  raw[start : start + 16] = bytes(16)
  (tmp_path / SMALL1).write_bytes(bytes(raw))
  with pytest.raises(
      ValueError, match=r'member .*Balinese/character01/0108_01\.png cannot be read'
  ):
    load_omniglot(tmp_path, [SMALL1], download=False)


def test_lake_labels_must_match_the_runs(data_dir, tmp_path):
  with (
      zipfile.ZipFile(data_dir / 'all_runs.zip') as source,
      zipfile.ZipFile(tmp_path / 'all_runs.zip', 'w') as target,
  ):
    for info in source.infolist():
      data = source.read(info)
      if info.filename == 'run05/class_labels.txt':
        data = data.replace(b'run05/training/class03.png', b'run05/training/class33.png', 1)
      target.writestr(info, data)
  with pytest.raises(
      ValueError, match=r"run05/class_labels.txt names training images \['class33.png'\]"
  ):
    load_lake_runs(tmp_path, download=False)
