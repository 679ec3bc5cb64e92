"""The training input path: batches gathered on the devices or prefetched from the host, the
same values either way; `config.data_on_device` and when 'auto' keeps the images resident."""

import json
import pathlib
import sys
import types

import jax
import numpy as np
import pytest

from groundwork import training
from groundwork.data import prefetch
from groundwork.training import metric_log
from semisup import train as ssl_train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'configs' / 'ssl'))
import semi_supervised  # noqa: E402  pylint: disable=wrong-import-position


def _arrays(n=24):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 5, 5, 3), dtype=np.uint8)
  return images, np.arange(n, dtype=np.int32), rng.random(n).astype(np.float32)


def test_resident_and_host_batches_are_the_same_rows_on_the_devices():
  arrays = _arrays()
  index_batches = np.random.default_rng(1).permutation(24).reshape(6, 4)
  mesh = training.data_mesh()
  place = lambda tree: training.shard_batch(tree, mesh)
  host = list(prefetch.gathered_batches(arrays, index_batches, place))
  resident = list(prefetch.gathered_batches(training.replicate(arrays, mesh), index_batches, place))
  assert len(host) == len(resident) == 6
  for idx, a, b in zip(index_batches, host, resident):
    for array, x, y in zip(arrays, a, b):
      assert isinstance(x, jax.Array) and isinstance(y, jax.Array)
      assert x.dtype == y.dtype == array.dtype
      np.testing.assert_array_equal(np.asarray(x), array[idx])
      np.testing.assert_array_equal(np.asarray(y), array[idx])


def test_arrays_are_all_on_the_devices_or_none():
  images, labels, _ = _arrays()
  mixed = (jax.device_put(images), labels)
  with pytest.raises(ValueError, match='every array on the devices, or none'):
    next(prefetch.gathered_batches(mixed, [np.arange(4)], jax.device_put))


def _devices_with_memory(monkeypatch, limit):
  device = types.SimpleNamespace(
      memory_stats=lambda: None if limit is None else {'bytes_limit': limit}
  )
  monkeypatch.setattr(prefetch.jax, 'local_devices', lambda: [device, device])


@pytest.mark.parametrize(
    ('setting', 'limit', 'nbytes', 'resident'),
    [
        ('auto', 4_000, 1_000, True),  # A quarter of the memory fits.
        ('auto', 4_000, 1_001, False),
        ('auto', None, 10**12, True),  # No limit reported (a CPU): the host's memory.
        ('yes', 4_000, 10**6, True),
        ('no', None, 1, False),
    ],
)
def test_data_on_device_setting(monkeypatch, setting, limit, nbytes, resident):
  _devices_with_memory(monkeypatch, limit)
  assert prefetch.keep_on_device(setting, nbytes) is resident


def test_data_on_device_rejects_other_values_naming_the_field():
  with pytest.raises(ValueError, match=r"config\.data_on_device='gpu' is not one of"):
    prefetch.keep_on_device('gpu', 1)
  config = semi_supervised.get_config('smoke,dataset=digits')
  config.data_on_device = 'always'
  with pytest.raises(ValueError, match=r"config\.data_on_device='always'"):
    ssl_train.check_config(config)


def test_ssl_run_is_the_same_with_resident_or_host_batches(tmp_path, monkeypatch):
  """The two-stream Mean Teacher stage from index arrays: the same logged losses and
  results.json whether the images stay on the device or are prefetched from the host."""
  logged = []
  original = metric_log.MetricLogger.log

  def log(self, step, scalars, *args, **kwargs):
    logged.append((step, {k: float(v) for k, v in scalars.items()}))
    return original(self, step, scalars, *args, **kwargs)

  monkeypatch.setattr(metric_log.MetricLogger, 'log', log)
  runs = {}
  for setting in ('yes', 'no'):
    logged.clear()
    config = semi_supervised.get_config('smoke,dataset=digits,method=mt')
    config.data_on_device = setting
    workdir = tmp_path / setting
    ssl_train.train_and_evaluate(config, str(workdir))
    runs[setting] = (list(logged), json.loads((workdir / 'results.json').read_text()))
  assert runs['yes'][0] and runs['yes'] == runs['no']
