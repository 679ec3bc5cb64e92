"""The trained-workdir API: docs/figures.md's example run as written, files read as the loader
reads them, the run's own numbers reproduced through it, and its errors."""

import contextlib
import fnmatch
import io
import json
import os
import pathlib
import re
import sys
import zipfile

import numpy as np
import pytest

from fsl import fewshot_data
from fsl import figures as fsl_figures
from fsl import train as fsl_train
from fsl.trained import load_trained
from groundwork import data as gdata
from groundwork import trained
from semisup import datasets
from semisup import train as ssl_train
from semisup.trained import load_trained as load_semisup

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'figures.md'
OMNIGLOT_DIR = os.environ.get('OMNIGLOT_DIR', str(ROOT.parent / 'shared' / 'data' / 'omniglot'))
FASHION_DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
NOVEL_ZIP = os.path.join(OMNIGLOT_DIR, 'images_background_small2.zip')
needs_fashion = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_DIR, 'train-images-idx3-ubyte.gz')),
    reason=f'Fashion-MNIST IDX files not in {FASHION_DIR}',
)


def _config(folder: str, name: str, arg: str):
  sys.path.insert(0, str(ROOT / 'configs' / folder))
  config = __import__(name).get_config(arg)
  config.data_dir = OMNIGLOT_DIR if folder == 'fsl' else FASHION_DIR
  return config


@pytest.fixture(scope='module')
def fewshot_workdir(tmp_path_factory):
  if not os.path.exists(NOVEL_ZIP):
    pytest.skip(f'Omniglot zips not found in {OMNIGLOT_DIR}')
  workdir = tmp_path_factory.mktemp('dc')
  fsl_train.train_and_evaluate(_config('fsl', 'dense_classification', 'smoke'), str(workdir))
  return workdir


def _doc_blocks(language: str) -> list[str]:
  return re.findall(rf'```{language}\n(.*?)```', DOC.read_text(), re.S)


def _extract_like_the_doc(cwd: pathlib.Path) -> None:
  """What the doc's `unzip ... 'pattern' -d folder` does, without unzip."""
  (command,) = [block for block in _doc_blocks('sh') if 'unzip' in block]
  pattern = re.search(r"'([^']+)'", command)[1]
  folder = cwd / re.search(r'-d (\S+)', command)[1]
  with zipfile.ZipFile(NOVEL_ZIP) as archive:
    members = [m for m in archive.namelist() if fnmatch.fnmatch(m, pattern)]
    assert members, pattern
    archive.extractall(folder, members)


def test_the_documented_example_runs(fewshot_workdir, tmp_path, monkeypatch):
  _extract_like_the_doc(tmp_path)
  (example,) = [block for block in _doc_blocks('python') if 'load_trained' in block]
  assert "'workdirs/omniglot_conv4_dc'" in example
  code = example.replace("'workdirs/omniglot_conv4_dc'", repr(str(fewshot_workdir)))
  monkeypatch.chdir(tmp_path)
  printed, scope = io.StringIO(), {}
  with contextlib.redirect_stdout(printed):
    exec(compile(code, str(DOC), 'exec'), scope)  # pylint: disable=exec-used
  lines = printed.getvalue().splitlines()
  names = ['character01', 'character02', 'character03']
  assert len(lines) == 9 + 2
  for line, query in zip(lines, scope['queries']):
    true, _, predicted = line.partition(' -> ')
    assert true == pathlib.Path(query).parent.name and predicted.split(' ')[0] in names
  assert lines[9] == '(9, 8) (9, 7, 7, 8)'  # The smoke network is 8 channels wide.
  base = json.loads((fewshot_workdir / 'model.json').read_text())['class_names']
  assert all(name in base for name in eval(lines[10]))  # pylint: disable=eval-used
  # Each support image is closest to its own prototype (1-shot: its own direction).
  own = scope['model'].classify_by_support(scope['support'], scope['support'], names)
  assert own.labels == names
  np.testing.assert_allclose(np.diag(own.scores), 1.0, atol=1e-5)


def test_the_readme_example_runs(fewshot_workdir, tmp_path, monkeypatch):
  _extract_like_the_doc(tmp_path)  # The same characters as README's unzip comment.
  readme = (ROOT / 'README.md').read_text()
  (example,) = [b for b in re.findall(r'```python\n(.*?)```', readme, re.S) if 'load_trained' in b]
  code = example.replace("'workdirs/quickstart'", repr(str(fewshot_workdir)))
  monkeypatch.chdir(tmp_path)
  printed, scope = io.StringIO(), {}
  with contextlib.redirect_stdout(printed):
    exec(compile(code, 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  labels = eval(printed.getvalue())  # pylint: disable=eval-used
  assert len(labels) == len(scope['queries']) == 6
  assert set(labels) <= {'character01', 'character02'}


def test_files_are_read_as_the_loader_reads_them(fewshot_workdir, tmp_path):
  model = load_trained(str(fewshot_workdir))
  novel = gdata.load_omniglot(OMNIGLOT_DIR, ('images_background_small2.zip',), image_size=28)
  picks = [0, 25, 400]
  with zipfile.ZipFile(NOVEL_ZIP) as archive:
    paths = [archive.extract(novel.filenames[i], tmp_path) for i in picks]
  np.testing.assert_array_equal(model.images(paths), novel.images[picks])
  np.testing.assert_allclose(model.embed(paths), model.embed(novel.images[picks]), rtol=1e-6)
  # One image, grey [H, W] or [H, W, 1], and a list mixing files and arrays.
  np.testing.assert_array_equal(model.images(novel.images[0, ..., 0]), novel.images[:1])
  np.testing.assert_array_equal(model.images([paths[0], novel.images[25]]), novel.images[[0, 25]])


def test_the_api_reproduces_the_runs_class_activation_maps(fewshot_workdir):
  # Independent of the trainer's path: the API's embeddings and prototypes give the maps
  # the run drew.
  model = load_trained(str(fewshot_workdir))
  record = fsl_figures.read_cam_record(str(fewshot_workdir))
  config = _config('fsl', 'dense_classification', 'smoke')
  novel = fewshot_data.load(config).novel
  n = len(record['query'])
  prototypes, _ = model.prototypes(
      novel.images[record['support'].ravel()], np.repeat(np.arange(n), record['support'].shape[1])
  )
  maps = model.feature_maps(novel.images[record['query']])
  maps = maps / np.linalg.norm(maps, axis=-1, keepdims=True)
  own = np.einsum('nhwc,nc->nhw', maps, prototypes)
  np.testing.assert_allclose(own, record['maps'], atol=1e-5)


def test_head_classification_matches_the_logits(fewshot_workdir):
  model = load_trained(str(fewshot_workdir))
  images = gdata.load_omniglot(OMNIGLOT_DIR, ('images_background_small1.zip',), 28).images[:5]
  predictions = model.classify(images)
  logits = model.logits(images)
  np.testing.assert_array_equal(predictions.indices, logits.argmax(-1))
  assert predictions.labels == [model.class_names[i] for i in predictions.indices]
  np.testing.assert_allclose(predictions.scores.sum(-1), 1.0, rtol=1e-5)
  assert model.step == json.loads((fewshot_workdir / 'finished.json').read_text())['step']


@needs_fashion
def test_semi_supervised_api_gives_the_runs_test_errors(tmp_path):
  config = _config('ssl', 'semi_supervised', 'smoke,method=mt')
  results = ssl_train.train_and_evaluate(config, str(tmp_path))
  _, test = datasets.load(config)
  for teacher, key in ((False, 'error'), (True, 'error_teacher')):
    model = load_semisup(str(tmp_path), teacher=teacher)
    error = np.mean(model.classify(test.images).indices != test.labels)
    assert error == pytest.approx(results['test'][key], abs=1e-6)
  features, maps = model.embed(test.images[:4]), model.feature_maps(test.images[:4])
  assert features.shape == (4, 8) and maps.shape == (4, 7, 7, 8)


def test_errors_name_what_to_do(fewshot_workdir, tmp_path):
  model = load_trained(str(fewshot_workdir))
  with pytest.raises(ValueError, match=r'takes \[N, 28, 28, 1\] .*pass their files'):
    model.embed(np.zeros((2, 32, 32), np.uint8))
  with pytest.raises(ValueError, match='dtype float32; pass uint8'):
    model.embed(np.zeros((2, 28, 28), np.float32))
  with pytest.raises(ValueError, match='2 support images but 1 support labels'):
    model.prototypes(np.zeros((2, 28, 28), np.uint8), ['a'])
  with pytest.raises(ValueError, match="scoring='max' is not one of"):
    model.classify_by_support(
        np.zeros((1, 28, 28), np.uint8), np.zeros((1, 28, 28), np.uint8), [0], scoring='max'
    )
  with pytest.raises(ValueError, match="config.trainer='fsl'; semisup.trained loads"):
    load_semisup(str(fewshot_workdir))
  (tmp_path / 'config.json').write_text('{"trainer": "fsl"}')
  with pytest.raises(FileNotFoundError, match='model.json does not exist.*train command again'):
    load_trained(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='config.json does not exist'):
    trained.read_workdir(str(tmp_path / 'nowhere'))
