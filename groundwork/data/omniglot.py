"""Omniglot read straight from the official zips, and Lake's 20 one-shot runs.

The zips are read without unpacking. Images are 105x105 one-bit PNGs with
black strokes on white; they are inverted so strokes are the high values
(foreground) and resized with Lanczos antialiasing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import re
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from groundwork.data.dataset import ImageDataset

_BASE_URL = 'https://github.com/brendenlake/omniglot/raw/master/python/'

# file -> (official URL, sha256). The background/evaluation hashes are those
# tensorflow-datasets records for the same URLs.
OMNIGLOT_FILES: dict[str, tuple[str, str]] = {
    'images_background.zip': (
        _BASE_URL + 'images_background.zip',
        'ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640',
    ),
    'images_evaluation.zip': (
        _BASE_URL + 'images_evaluation.zip',
        '1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee',
    ),
    'images_background_small1.zip': (
        _BASE_URL + 'images_background_small1.zip',
        'f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4',
    ),
    'images_background_small2.zip': (
        _BASE_URL + 'images_background_small2.zip',
        '3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f',
    ),
    'all_runs.zip': (
        _BASE_URL + 'one-shot-classification/all_runs.zip',
        '437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325',
    ),
}

_IMAGE_PATH = re.compile(r'^[^/]+/([^/]+)/(character\d+)/([^/]+\.png)$')
_LAKE_LABEL_LINE = re.compile(r'^(run\d+)/test/(item\d+\.png)\s+(run\d+)/training/(class\d+\.png)$')


@dataclasses.dataclass(frozen=True, eq=False)
class LakeRun:
  """One of Lake's 20-way one-shot runs.

  Attributes:
    train_images: uint8 [20, H, W, 1], one image per class, class01..class20.
    test_images: uint8 [20, H, W, 1], item01..item20.
    test_targets: int32 [20], index into `train_images` of each item's class.
  """

  train_images: np.ndarray
  test_images: np.ndarray
  test_targets: np.ndarray


def omniglot_alphabet_of(class_name: str) -> str:
  """'Greek/character03' -> 'Greek'."""
  return class_name.split('/', 1)[0]


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _download(url: str, sha256: str, dest: Path) -> None:
  """Fetches `url` to `dest`; the file appears only once its hash is right."""
  partial = dest.with_name(dest.name + '.partial')
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, 'wb') as f:
      for block in iter(lambda: response.read(1 << 20), b''):
        f.write(block)
    actual = _sha256(partial)
    if actual != sha256:
      raise ValueError(f'{url}: downloaded file has sha256 {actual}, expected {sha256}.')
    os.replace(partial, dest)
  finally:
    partial.unlink(missing_ok=True)


def omniglot_file(data_dir: str | os.PathLike, filename: str, download: bool = True) -> Path:
  """Path of an official Omniglot file in `data_dir`, downloaded if absent.

  Raises:
    FileNotFoundError: the file is absent and could not be downloaded; the
      message names the file, the directory searched and the official URL.
  """
  if filename not in OMNIGLOT_FILES:
    raise ValueError(
        f'Unknown Omniglot file {filename!r}; the official files are ' f'{sorted(OMNIGLOT_FILES)}.'
    )
  data_dir = Path(data_dir).expanduser()
  path = data_dir / filename
  if path.is_file():
    return path
  url, sha256 = OMNIGLOT_FILES[filename]
  reason = 'downloading is disabled'
  if download and not data_dir.is_dir():
    # Never created: a mistyped data_dir would fill with a download nobody looks for.
    reason = 'that directory does not exist (it is not created; make it to download there)'
  elif download:
    try:
      _download(url, sha256, path)
      return path
    except (OSError, ValueError, http.client.HTTPException) as e:
      reason = f'the download failed ({e})'
  raise FileNotFoundError(
      f'Omniglot file {filename} is not in {data_dir.resolve()} and {reason}. '
      f'Get it from {url} (sha256 {sha256}) and put it in that directory, '
      f'or point data_dir at the directory that holds it.'
  )


def _open_zip(path: Path) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(
        f'{path}: not a readable zip archive ({e}); the file is truncated or '
        f'corrupt. Delete it and get it again from {OMNIGLOT_FILES[path.name][0]}.'
    ) from None


def _read_png(archive: zipfile.ZipFile, member: str, image_size: int) -> np.ndarray:
  """One character image as uint8 [image_size, image_size, 1], strokes high."""
  try:
    data = archive.read(member)
    with Image.open(io.BytesIO(data)) as image:
      grey = image.convert('L')
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
    raise ValueError(
        f'{archive.filename}: member {member} cannot be read ({e}); '
        f'the archive is corrupt. Get it again from '
        f'{OMNIGLOT_FILES[Path(archive.filename).name][0]}.'
    ) from None
  inverted = Image.fromarray(255 - np.asarray(grey))
  if inverted.size != (image_size, image_size):
    inverted = inverted.resize((image_size, image_size), Image.Resampling.LANCZOS)
  return np.asarray(inverted, np.uint8)[..., None]


def load_omniglot(
    data_dir: str | os.PathLike,
    archives: Sequence[str] = ('images_background_small1.zip', 'images_background_small2.zip'),
    image_size: int = 28,
    download: bool = True,
) -> ImageDataset:
  """Omniglot characters from the official zips, deduplicated by alphabet/character.

  Args:
    data_dir: directory holding the zips as published.
    archives: zip names (with or without '.zip'), e.g. 'images_background'.
      A character present in several archives is taken from the first.
    image_size: output side; 105 keeps the original resolution.
    download: fetch absent zips from the official location.

  Returns:
    ImageDataset with classes 'Alphabet/characterNN' in sorted order, images
    of each class sorted by file name (one per drawer), and filenames
    '<archive folder>/<Alphabet>/<characterNN>/<id>_<drawer>.png'.
  """
  members: dict[str, tuple[zipfile.ZipFile, list[str]]] = {}
  opened = []
  try:
    for name in archives:
      filename = name if name.endswith('.zip') else name + '.zip'
      archive = _open_zip(omniglot_file(data_dir, filename, download))
      opened.append(archive)
      found: dict[str, list[str]] = {}
      for member in archive.namelist():
        match = _IMAGE_PATH.match(member)
        if match:
          found.setdefault(f'{match[1]}/{match[2]}', []).append(member)
      if not found:
        raise ValueError(
            f'{archive.filename}: no <Alphabet>/characterNN/*.png images '
            f'found; this is not an Omniglot images archive.'
        )
      for class_name, files in found.items():
        members.setdefault(class_name, (archive, sorted(files)))

    class_names = sorted(members)
    images, labels, filenames = [], [], []
    for label, class_name in enumerate(class_names):
      archive, files = members[class_name]
      for member in files:
        images.append(_read_png(archive, member, image_size))
        labels.append(label)
        filenames.append(member)
  finally:
    for archive in opened:
      archive.close()
  return ImageDataset(
      images=np.stack(images),
      labels=np.asarray(labels, np.int32),
      class_names=class_names,
      filenames=filenames,
  )


def _parse_lake_labels(source: str, text: str, run: str) -> dict[str, str]:
  """class_labels.txt -> {test item file: training class file}."""
  truth = {}
  for line_number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    match = _LAKE_LABEL_LINE.match(line)
    if not match or match[1] != run or match[3] != run:
      raise ValueError(
          f'{source}, line {line_number}: expected '
          f'"{run}/test/itemNN.png {run}/training/classNN.png", found {line!r}.'
      )
    truth[match[2]] = match[4]
  return truth


def load_lake_runs(
    data_dir: str | os.PathLike, image_size: int = 28, download: bool = True
) -> list[LakeRun]:
  """Lake et al.'s 20 runs of 20-way one-shot classification from all_runs.zip."""
  path = omniglot_file(data_dir, 'all_runs.zip', download)
  runs = []
  with _open_zip(path) as archive:
    names = set(archive.namelist())
    run_ids = sorted({n.split('/', 1)[0] for n in names if re.match(r'^run\d+/', n)})
    if len(run_ids) != 20:
      raise ValueError(
          f'{path}: expected 20 runs run01..run20, found {len(run_ids)}; '
          f'the archive is truncated or not all_runs.zip.'
      )
    for run in run_ids:
      labels_member = f'{run}/class_labels.txt'
      if labels_member not in names:
        raise ValueError(f'{path}: {labels_member} is missing.')
      try:
        text = archive.read(labels_member).decode('ascii')
      except (zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: {labels_member} cannot be read ({e}).') from None
      truth = _parse_lake_labels(f'{path}:{labels_member}', text, run)
      train_files = sorted(
          n.rsplit('/', 1)[1] for n in names if re.match(rf'^{run}/training/class\d+\.png$', n)
      )
      test_files = sorted(truth)
      if len(train_files) != 20 or len(test_files) != 20:
        raise ValueError(
            f'{path}: {run} has {len(train_files)} training images and '
            f'{len(test_files)} labelled test items; expected 20 and 20.'
        )
      unknown = sorted(set(truth.values()) - set(train_files))
      if unknown:
        raise ValueError(
            f'{path}:{labels_member} names training images {unknown} '
            f'that are not in {run}/training/.'
        )
      runs.append(
          LakeRun(
              train_images=np.stack(
                  [_read_png(archive, f'{run}/training/{f}', image_size) for f in train_files]
              ),
              test_images=np.stack(
                  [_read_png(archive, f'{run}/test/{f}', image_size) for f in test_files]
              ),
              test_targets=np.asarray([train_files.index(truth[f]) for f in test_files], np.int32),
          )
      )
  return runs


def lake_error_rate(runs: Sequence[LakeRun], predictions: Sequence[np.ndarray]) -> float:
  """Error over all test items of all runs (Lake's score), in [0, 1].

  Args:
    runs: the runs from `load_lake_runs`.
    predictions: per run, int [20] predicted index into that run's train_images.
  """
  if len(predictions) != len(runs):
    raise ValueError(f'Got predictions for {len(predictions)} runs, expected {len(runs)}.')
  wrong = total = 0
  for run, predicted in zip(runs, predictions):
    predicted = np.asarray(predicted)
    if predicted.shape != run.test_targets.shape:
      raise ValueError(
          f'Each run needs {run.test_targets.shape[0]} predictions, '
          f'got shape {predicted.shape}.'
      )
    wrong += int(np.sum(predicted != run.test_targets))
    total += predicted.size
  return wrong / total
