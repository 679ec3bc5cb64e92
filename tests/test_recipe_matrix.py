"""Every config's smoke variant end to end, on tiny fake files in each dataset's published format.

Each case calls the real entry point (`train_and_evaluate(config, workdir)` of fsl.train,
fsl.train_implanting or semisup.train) and checks the results.json it writes.

The full product (6 few-shot sources x 2 heads x 4 encoders = 48 base runs, plus 20
semi-supervised runs) takes far longer than the ~3 minute budget of this file on a 2-core CPU,
where each run's time is mostly XLA compiles. So the base runs form a covering array: every
few-shot source runs with both heads, and the four encoders are spread so that every
(encoder, head) pair runs at least once and every fake source meets two encoders; Omniglot,
the one real and slowest set (136 base classes, Lake's 400 items), runs its recipe's Conv-4:

  source                  head=dc          head=gap
  omniglot (real zips)    conv4            conv4
  miniimagenet, pickle    resnet12         conv4
  miniimagenet, csv       resnet12_wide    resnet18
  miniimagenet, ren       resnet18         resnet12_wide
  cifar_fs                resnet12         resnet18
  fc100                   resnet12_wide    resnet12

RFS's recipe (recipe=rfs: ResNet-12-wide with DropBlock warm-up and early dropout, a linear
head, RFS's optimiser) runs on miniimagenet/pickle (DropBlock size 5) and cifar_fs (size 2).

Implanting (configs/fsl/implanting.py smoke) runs on a dc workdir of each few-shot dataset,
with the encoders it supports (Conv-4 for Omniglot, ResNet-12 elsewhere): omniglot,
miniimagenet/pickle (ResNet-12), cifar_fs (ResNet-12), fc100 (ResNet-12-wide); the resnet18
base of miniimagenet/ren is checked to be refused with a clear error instead.

Semi-supervised (configs/ssl/semi_supervised.py smoke): digits, cifar10, cifar100 and
miniimagenet run mt_dlp, which trains the Mean Teacher stage and then the label-propagation
stage (the code paths of all four methods); fashion_mnist (fake IDX files) runs supervised, mt
and dlp, so each method also runs on its own, and dlp again with recipe=lp_deepssl (the
reference's recipe, which cifar10, cifar100 and miniimagenet take by default). digits ships
with scikit-learn (no files).

Omniglot needs the real zips ($OMNIGLOT_DIR, default ../shared/data/omniglot) and is skipped
without them; everything else writes its own files.
"""

import json
import math
import os
import pathlib
import sys

import pytest

from fsl import train as fsl_train
from fsl import train_implanting as fsl_train_implanting
from semisup import datasets as ssl_datasets
from semisup import train as ssl_train
from tests import fake_data

# These runs check that each recipe runs and writes sane numbers, not its speed.
pytestmark = [pytest.mark.matrix, pytest.mark.usefixtures('fast_compiles')]

ROOT = pathlib.Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = os.environ.get('OMNIGLOT_DIR', str(ROOT.parent / 'shared' / 'data' / 'omniglot'))
HAVE_OMNIGLOT = os.path.exists(os.path.join(OMNIGLOT_DIR, 'images_background_small1.zip'))

sys.path.insert(0, str(ROOT / 'configs' / 'fsl'))
sys.path.insert(0, str(ROOT / 'configs' / 'ssl'))
import dense_classification  # noqa: E402  pylint: disable=wrong-import-position
import implanting  # noqa: E402  pylint: disable=wrong-import-position
import semi_supervised  # noqa: E402  pylint: disable=wrong-import-position

# Few-shot fake miniImageNet: 8 base classes (4 images each are kept by the smoke config,
# two batches of 16), 5 validation and 5 test classes, the 5-way episodes' minimum; 12
# images per class cover the largest shot (10) plus the smoke config's 2 queries.
MINI_CLASSES = {'train': 8, 'val': 5, 'test': 5}
MINI_PER_CLASS = 12
# CIFAR-100: 6 train + 6 test images per class, pooled to 12 by the few-shot splits.
CIFAR100_PER_CLASS = 6

FSL_CASES = [
    ('omniglot', 'dc', 'conv4'),
    ('omniglot', 'gap', 'conv4'),
    ('mini_pickle', 'dc', 'resnet12'),
    ('mini_pickle', 'gap', 'conv4'),
    ('mini_csv', 'dc', 'resnet12_wide'),
    ('mini_csv', 'gap', 'resnet18'),
    ('mini_ren', 'dc', 'resnet18'),
    ('mini_ren', 'gap', 'resnet12_wide'),
    ('cifar_fs', 'dc', 'resnet12'),
    ('cifar_fs', 'gap', 'resnet18'),
    ('fc100', 'dc', 'resnet12_wide'),
    ('fc100', 'gap', 'resnet12'),
]
IMPLANTABLE = ('conv4', 'resnet12', 'resnet12_wide')
IMPLANT_SOURCES = ('omniglot', 'mini_pickle', 'mini_ren', 'cifar_fs', 'fc100')


def _dataset_of(source: str) -> str:
  return 'miniimagenet' if source.startswith('mini_') else source


@pytest.fixture(scope='module')
def fake_root(tmp_path_factory):
  """Every fake dataset, written once for the module."""
  root = tmp_path_factory.mktemp('fake_data')
  for fmt in ('pickle', 'csv', 'ren'):
    fake_data.write_miniimagenet(root / f'mini_{fmt}', fmt, MINI_CLASSES, MINI_PER_CLASS)
  fake_data.write_cifar100(root / 'cifar100', per_class=CIFAR100_PER_CLASS, tarball=False)
  return root


def _data_dir(source: str, root: pathlib.Path) -> str:
  if source == 'omniglot':
    if not HAVE_OMNIGLOT:
      pytest.skip(f'Omniglot zips not found in {OMNIGLOT_DIR} (set OMNIGLOT_DIR)')
    return OMNIGLOT_DIR
  if source in ('cifar_fs', 'fc100'):
    return str(root / 'cifar100')
  return str(root / source)


def _fsl_config(source, head, encoder, root):
  config = dense_classification.get_config(
      f'dataset={_dataset_of(source)},head={head},encoder={encoder},smoke'
  )
  config.data_dir = _data_dir(source, root)
  return config


def _check_summary(entry, episodes):
  assert entry['episodes'] == episodes
  assert math.isfinite(entry['accuracy']) and 0.0 <= entry['accuracy'] <= 1.0
  assert math.isfinite(entry['ci95']) and entry['ci95'] >= 0.0


def _check_fewshot(workdir, results, shots, episodes, n_way=5):
  written = json.loads((workdir / 'results.json').read_text())
  assert written == json.loads(json.dumps(results))  # What it returns is what it writes.
  assert set(written['fewshot']) == {f'{n_way}way_{k}shot' for k in shots}
  for entry in written['fewshot'].values():
    _check_summary(entry, episodes)
  return written


_DC_WORKDIRS = {}


@pytest.mark.parametrize(('source', 'head', 'encoder'), FSL_CASES)
def test_fewshot_smoke(source, head, encoder, fake_root, tmp_path_factory):
  config = _fsl_config(source, head, encoder, fake_root)
  workdir = tmp_path_factory.mktemp(f'{source}_{head}_{encoder}')
  results = fsl_train.train_and_evaluate(config, str(workdir))
  written = _check_fewshot(workdir, results, config.eval.shots, config.eval.episodes)
  lake = {'lake_oneshot'} if source == 'omniglot' else set()
  assert set(written) == {'fewshot', 'retrieval', 'precision'} | lake
  if source == 'omniglot':
    assert written['lake_oneshot']['items'] == 400
    assert 0.0 <= written['lake_oneshot']['error'] <= 1.0
  assert json.loads((workdir / 'config.json').read_text())['encoder'] == encoder
  if head == 'dc':
    _DC_WORKDIRS[source] = (workdir, encoder)


@pytest.mark.parametrize('source', ('mini_pickle', 'cifar_fs'))
def test_rfs_recipe_smoke(source, fake_root, tmp_path):
  config = dense_classification.get_config(f'dataset={_dataset_of(source)},recipe=rfs,smoke')
  config.data_dir = _data_dir(source, fake_root)
  results = fsl_train.train_and_evaluate(config, str(tmp_path))
  _check_fewshot(tmp_path, results, config.eval.shots, config.eval.episodes)
  written = json.loads((tmp_path / 'config.json').read_text())
  assert (written['recipe'], written['encoder'], written['head']) == (
      'rfs',
      'resnet12_wide',
      'linear',
  )
  assert written['encoder_kwargs']['dropblock_size'] == (5 if source == 'mini_pickle' else 2)


@pytest.mark.parametrize('source', IMPLANT_SOURCES)
def test_implanting_smoke_on_the_dc_workdir(source, tmp_path):
  if source not in _DC_WORKDIRS:
    pytest.skip(f'the {source} dc base run did not run or failed')
  base_workdir, encoder = _DC_WORKDIRS[source]
  config = implanting.get_config(f'dataset={_dataset_of(source)},smoke')
  config.base_workdir = str(base_workdir)
  if encoder not in IMPLANTABLE:
    # Implants go into Conv-4's or ResNet-12's last block only; others must be refused early.
    with pytest.raises(ValueError, match='(?i)implant'):
      fsl_train_implanting.train_and_evaluate(config, str(tmp_path))
    return
  results = fsl_train_implanting.train_and_evaluate(config, str(tmp_path))
  written = _check_fewshot(tmp_path, results, config.eval.shots, config.eval.episodes)
  assert set(written) == {'fewshot', 'dc_same_episodes', 'paired_gain', 'precision'}
  for name, imp in written['fewshot'].items():
    dc = written['dc_same_episodes'][name]
    _check_summary(dc, config.eval.episodes)
    gain = written['paired_gain'][name]
    assert math.isclose(gain['accuracy'], imp['accuracy'] - dc['accuracy'], abs_tol=1e-6)
    assert -1.0 <= gain['accuracy'] <= 1.0 and gain['ci95'] >= 0.0


# ---------------------------------------------------------------- semi-supervised

# The SSL miniImageNet split trains on the first 500 images of each class and tests on the
# rest; fake classes of 44 images with 40 to train keep the same rule at a tiny size.
SSL_MINI_TRAIN_PER_CLASS = 40
# 20 classes: the smoke's 600-image subset and 100 labels are balanced draws, which need a
# class count dividing both; 20 x 40 = 800 training images >= 600.
SSL_MINI_CLASSES = {'train': 10, 'val': 5, 'test': 5}

# (dataset, method, recipe); '' is the dataset's own: lp_deepssl for cifar10, cifar100 and
# miniimagenet, project for fashion_mnist and digits.
SSL_CASES = [
    ('fashion_mnist', 'supervised', ''),
    ('fashion_mnist', 'mt', ''),
    ('fashion_mnist', 'dlp', ''),
    ('fashion_mnist', 'dlp', 'lp_deepssl'),
    ('digits', 'mt_dlp', ''),
    ('cifar10', 'mt_dlp', ''),
    ('cifar100', 'mt_dlp', ''),
    ('miniimagenet', 'mt_dlp', ''),
]


@pytest.fixture(scope='module')
def ssl_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('ssl_data')
  # The smoke config draws a 600-image training subset; the test sets stay small.
  fake_data.write_fashion_mnist(root / 'fashion_mnist', n_train=700, n_test=60)
  fake_data.write_cifar10(root / 'cifar10', per_batch=140, n_test=60)
  fake_data.write_cifar100(root / 'cifar100', per_class=7, tarball=False)
  fake_data.write_miniimagenet(
      root / 'miniimagenet', 'ren', SSL_MINI_CLASSES, SSL_MINI_TRAIN_PER_CLASS + 4, seed=1
  )
  return root


@pytest.mark.parametrize(('dataset', 'method', 'recipe'), SSL_CASES)
def test_semi_supervised_smoke(dataset, method, recipe, ssl_root, tmp_path, monkeypatch):
  if dataset == 'miniimagenet':
    # Why: with the real 500 the fake classes would leave no test image; the split rule
    # itself (first N of each class train, the rest test) is what runs.
    monkeypatch.setattr(ssl_datasets, 'MINIIMAGENET_TRAIN_PER_CLASS', SSL_MINI_TRAIN_PER_CLASS)
  config = semi_supervised.get_config(f'dataset={dataset},method={method},recipe={recipe},smoke')
  if dataset != 'digits':
    config.data_dir = str(ssl_root / dataset)
  results = ssl_train.train_and_evaluate(config, str(tmp_path))
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written == json.loads(json.dumps(results))
  teacher = method in ('mt', 'mt_dlp')
  assert set(written['test']) == ({'error', 'error_teacher'} if teacher else {'error'})
  for error in written['test'].values():
    assert math.isfinite(error) and 0.0 <= error <= 1.0
  if method in ('dlp', 'mt_dlp'):
    accuracy = written['pseudo_label_accuracy']
    assert math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0
  else:
    assert 'pseudo_label_accuracy' not in written
