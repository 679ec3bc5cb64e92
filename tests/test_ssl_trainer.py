"""The semi-supervised trainer: smoke runs of every method, schedules, bad input."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
needs_fashion = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_DIR, 'train-images-idx3-ubyte.gz')),
    reason=f'Fashion-MNIST IDX files not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)',
)

from semisup import train as ssl_train  # noqa: E402


def _config(arg='smoke', **overrides):
  sys.path.insert(0, str(ROOT / 'configs' / 'ssl'))
  import semi_supervised  # pylint: disable=import-outside-toplevel

  config = semi_supervised.get_config(arg)
  config.data_dir = FASHION_DIR
  config.update_from_flattened_dict(overrides)
  return config


def test_mean_teacher_learning_rate_schedule():
  config = _config()
  config.optim.lr, config.optim.initial_lr, config.optim.rampup_epochs = 0.1, 0.0, 2
  schedule = ssl_train.mean_teacher_schedule(config.optim, steps_per_epoch=10, stage_epochs=180)
  rampdown = 210.0
  for step, ramp in ((0, 0.0), (10, 0.5), (20, 1.0), (1000, 1.0)):
    epoch = step / 10
    expected = 0.1 * ramp * 0.5 * (np.cos(np.pi * epoch / rampdown) + 1)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-8)


def test_bad_configs_stop_before_any_data_is_read():
  with pytest.raises(ValueError, match="config.method='pi' is not one of"):
    ssl_train.check_config(_config(method='pi'))
  with pytest.raises(ValueError, match='config.labeled_batch_size=20 must lie strictly'):
    ssl_train.check_config(_config(labeled_batch_size=20))
  with pytest.raises(ValueError, match="config.dataset='svhn' is not one of"):
    ssl_train.check_config(_config(dataset='svhn'))
  with pytest.raises(ValueError, match='config.optim.lr=-0.05 must be positive'):
    ssl_train.check_config(_config(**{'optim.lr': -0.05}))


@needs_fashion
def test_k_not_below_the_number_of_images_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='config.lp.k=600 must be smaller than the 600'):
    ssl_train.train_and_evaluate(_config(**{'lp.k': 600}), str(tmp_path))


@needs_fashion
@pytest.mark.parametrize(
    ('method', 'recipe'),
    [
        ('supervised', 'project'),
        ('mt', 'project'),
        ('dlp', 'project'),
        ('mt_dlp', 'project'),
        ('mt_dlp', 'lp_deepssl'),  # Augmented graph features, momentum kept, a new teacher.
    ],
)
def test_smoke_run_writes_results_json(tmp_path, method, recipe):
  config = _config(f'smoke,method={method},recipe={recipe}')
  results = ssl_train.train_and_evaluate(config, str(tmp_path))
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written == json.loads(json.dumps(results))
  assert 0.0 <= written['test']['error'] <= 1.0
  assert ('error_teacher' in written['test']) == (method in ('mt', 'mt_dlp'))
  if method in ('dlp', 'mt_dlp'):
    assert 0.0 <= written['pseudo_label_accuracy'] <= 1.0
  else:
    assert 'pseudo_label_accuracy' not in written
