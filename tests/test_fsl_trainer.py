"""The few-shot trainer: smoke run end to end, one compile, 1 vs 4 devices, bad input."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl import train as fsl_train
from fsl import train_implanting as fsl_train_implanting
from fsl.episodic_evaluation import load_episode_accuracies
from groundwork import training

ROOT = pathlib.Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = os.environ.get('OMNIGLOT_DIR', str(ROOT.parent / 'shared' / 'data' / 'omniglot'))
needs_omniglot = pytest.mark.skipif(
    not os.path.exists(os.path.join(OMNIGLOT_DIR, 'images_background_small1.zip')),
    reason=f'Omniglot zips not found in {OMNIGLOT_DIR} (set OMNIGLOT_DIR)',
)


def _config(arg='smoke', **overrides):
  sys.path.insert(0, str(ROOT / 'configs' / 'fsl'))
  import dense_classification  # pylint: disable=import-outside-toplevel

  config = dense_classification.get_config(arg)
  config.data_dir = OMNIGLOT_DIR
  config.update_from_flattened_dict(overrides)
  return config


def _tiny_state(config, num_classes=5, image_shape=(28, 28, 1)):
  model = fsl_train.build_model(config, num_classes)
  tx, _ = training.make_optimizer(config.optim, 10)
  return fsl_train.create_state(config, model, image_shape, tx)


def _batch(n=8, classes=5):
  images = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (n, 28, 28, 1), 0, 256), np.uint8)
  return images, np.arange(n, dtype=np.int32) % classes


def test_train_step_compiles_once():
  config = _config()
  traces = []

  def counted(*args, **kw):
    traces.append(1)
    return fsl_train.train_step(*args, **kw)

  step = jax.jit(
      functools.partial(counted, head='dc', augment_spec=fsl_train.train_augmentation(config))
  )
  state = _tiny_state(config)
  images, labels = _batch()
  losses = []
  for i in range(3):
    state, metrics = step(state, images, labels, training.step_rng(0, i))
    losses.append(float(metrics['loss']))
  assert len(traces) == 1
  assert all(np.isfinite(losses))


def test_gap_and_dc_heads_give_pooled_and_dense_logits():
  for head, rank in (('gap', 2), ('dc', 4)):
    config = _config(head=head)
    state = _tiny_state(config)
    logits, out = state.apply_fn(
        {'params': state.params, 'batch_stats': state.batch_stats},
        jnp.zeros((2, 28, 28, 1)),
        train=False,
    )
    assert logits.ndim == rank and logits.shape[-1] == 5
    assert out['feature_map'].shape[1:3] == (7, 7)  # Conv-4 with two pooled blocks.


FOUR_DEVICES = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"  # Four fake CPU devices, also on a one-GPU machine.
import functools, jax, numpy as np
sys.path.insert(0, sys.argv[1])
from tests.test_fsl_trainer import _config, _tiny_state, _batch
from fsl import train as fsl_train
from fsl import train_implanting as fsl_train_implanting
from groundwork import training
config = _config()
state = _tiny_state(config)
images, labels = _batch(8)
step = jax.jit(functools.partial(fsl_train.train_step, head="dc",
                                 augment_spec=fsl_train.train_augmentation(config)))
losses = []
for devices in (1, 4):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:devices]), ("data",))
  batch = training.shard_batch((images, labels), mesh)
  _, metrics = step(training.replicate(state, mesh), *batch, training.step_rng(0, 0))
  losses.append(float(metrics["loss"]))
print(len(jax.devices()), losses[0], losses[1])
"""


def test_one_and_four_devices_give_the_same_loss():
  out = subprocess.run(
      [sys.executable, '-c', FOUR_DEVICES, str(ROOT)], capture_output=True, text=True, cwd=ROOT
  )
  assert out.returncode == 0, out.stderr[-3000:]
  count, one, four = out.stdout.split()[-3:]
  assert int(count) == 4
  np.testing.assert_allclose(float(one), float(four), rtol=1e-5)


def test_bad_config_stops_before_compile():
  with pytest.raises(ValueError, match="config.head='fc' is not one of"):
    fsl_train.check_config(_config(head='fc'))
  with pytest.raises(ValueError, match='config.eval.n_way=0 must be at least 1'):
    fsl_train.check_config(_config(**{'eval.n_way': 0}))
  with pytest.raises(ValueError, match="config.dataset='mnist' is not one of"):
    fsl_train.check_config(_config(dataset='mnist'))


def test_evaluating_a_workdir_without_checkpoint_says_so(tmp_path):
  if not os.path.exists(os.path.join(OMNIGLOT_DIR, 'images_background_small1.zip')):
    pytest.skip('needs Omniglot')
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*train first'):
    fsl_train.evaluate(_config(), str(tmp_path))


@pytest.fixture(scope='module')
def dc_smoke_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('dc_smoke')
  fsl_train.train_and_evaluate(_config(head='dc'), str(workdir))
  return workdir


def _check_fewshot_results(workdir, shots, episodes):
  written = json.loads((workdir / 'results.json').read_text())
  assert set(written['fewshot']) == {f'5way_{k}shot' for k in shots}
  for entry in written['fewshot'].values():
    assert 0.0 <= entry['accuracy'] <= 1.0 and entry['ci95'] > 0 and entry['episodes'] == episodes
  assert (workdir / 'config.json').exists()
  return written


@needs_omniglot
def test_dc_smoke_run_writes_results_json(dc_smoke_workdir):
  written = _check_fewshot_results(dc_smoke_workdir, (1, 5), 20)
  assert written['lake_oneshot']['items'] == 400
  assert 0.0 <= written['lake_oneshot']['error'] <= 1.0
  per_episode = load_episode_accuracies(str(dc_smoke_workdir / 'episode_accuracies.npz'))
  assert set(per_episode) == {'5way_1shot', '5way_5shot'}
  for k_shot in (1, 5):
    accuracies, identity = per_episode[f'5way_{k_shot}shot']
    np.testing.assert_allclose(
        accuracies.mean(), written['fewshot'][f'5way_{k_shot}shot']['accuracy'], atol=1e-6
    )
    assert identity['k_shot'] == k_shot and identity['episodes'] == len(accuracies) == 20
    assert (identity['seed'], identity['n_way'], identity['n_query']) == (0, 5, 2)
  assert (
      per_episode['5way_1shot'][1]['index_sha256'] != per_episode['5way_5shot'][1]['index_sha256']
  )


@needs_omniglot
def test_gap_smoke_run_returns_what_it_writes(tmp_path):
  results = fsl_train.train_and_evaluate(_config(head='gap'), str(tmp_path))
  assert _check_fewshot_results(tmp_path, (1, 5), 20) == json.loads(json.dumps(results))


@needs_omniglot
def test_implanting_smoke_run_on_the_dc_workdir(dc_smoke_workdir, tmp_path):
  sys.path.insert(0, str(ROOT / 'configs' / 'fsl'))
  import implanting  # pylint: disable=import-outside-toplevel

  config = implanting.get_config('smoke')
  config.base_workdir = str(dc_smoke_workdir)
  results = fsl_train_implanting.train_and_evaluate(config, str(tmp_path))
  written = _check_fewshot_results(tmp_path, (5,), 8)
  assert written == json.loads(json.dumps(results))
  dc, imp = written['dc_same_episodes']['5way_5shot'], written['fewshot']['5way_5shot']
  np.testing.assert_allclose(
      written['paired_gain']['5way_5shot']['accuracy'], imp['accuracy'] - dc['accuracy'], atol=1e-6
  )
  # Its own per-episode file: DC+IMP under the setting's name, DC alone under 'dc_', one list.
  per_episode = load_episode_accuracies(str(tmp_path / 'episode_accuracies.npz'))
  assert set(per_episode) == {'5way_5shot', 'dc_5way_5shot'}
  (imp_acc, imp_id), (dc_acc, dc_id) = per_episode['5way_5shot'], per_episode['dc_5way_5shot']
  np.testing.assert_allclose(imp_acc.mean(), imp['accuracy'], atol=1e-6)
  np.testing.assert_allclose(dc_acc.mean(), dc['accuracy'], atol=1e-6)
  assert imp_id == dc_id and len(imp_acc) == imp_id['episodes'] == 8
  assert (imp_id['seed'], imp_id['n_way'], imp_id['k_shot'], imp_id['n_query']) == (0, 5, 5, 2)
  # The base run scored 20 episodes, the implanting smoke run 8: not the same list.
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  import paired_comparison  # pylint: disable=import-outside-toplevel

  with pytest.raises(ValueError, match='5way_5shot: episodes 20 vs 8; index hash'):
    paired_comparison.main(str(dc_smoke_workdir), str(tmp_path))


@needs_omniglot
def test_implanting_halves_a_batch_the_device_cannot_hold(
    dc_smoke_workdir, tmp_path, monkeypatch, capsys
):
  sys.path.insert(0, str(ROOT / 'configs' / 'fsl'))
  import implanting  # pylint: disable=import-outside-toplevel

  config = implanting.get_config('smoke')
  config.base_workdir = str(dc_smoke_workdir)
  plain = fsl_train_implanting.train_and_evaluate(config, str(tmp_path / 'plain'))
  real, sizes = fsl_train_implanting._batch_accuracies, []

  def only_one_fits(batch_fn, episodes, start, size):
    sizes.append(size)
    if size > 1:
      raise jax.errors.JaxRuntimeError(
          'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1234 bytes.'
      )
    return real(batch_fn, episodes, start, size)

  monkeypatch.setattr(fsl_train_implanting, '_batch_accuracies', only_one_fits)
  halved = fsl_train_implanting.train_and_evaluate(config, str(tmp_path / 'halved'))
  assert halved == plain
  assert sizes == [4, 2] + [1] * 8
  out = capsys.readouterr().out
  assert 'DC+IMP: 4 episodes per batch do not fit in the device memory; trying 2' in out
  assert '--config.eval.batch_episodes=1 starts there' in out

  def broken(batch_fn, episodes, start, size):
    raise jax.errors.JaxRuntimeError('INTERNAL: not a memory error')

  monkeypatch.setattr(fsl_train_implanting, '_batch_accuracies', broken)
  with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):
    fsl_train_implanting.train_and_evaluate(config, str(tmp_path / 'broken'))


@needs_omniglot
def test_implanting_a_missing_layer_is_an_error(dc_smoke_workdir, tmp_path):
  sys.path.insert(0, str(ROOT / 'configs' / 'fsl'))
  import implanting  # pylint: disable=import-outside-toplevel

  config = implanting.get_config('smoke')
  config.base_workdir = str(dc_smoke_workdir)
  config.implant.layers = ('conv7',)
  with pytest.raises(ValueError, match="Implant layer 'conv7' does not exist"):
    fsl_train_implanting.train_and_evaluate(config, str(tmp_path))


@needs_omniglot
def test_wide_control_trains_the_widened_encoder(tmp_path):
  config = _config(**{'wide_control.width': 4, 'optim.epochs': 1})
  config.eval.lake = False
  fsl_train.train_and_evaluate(config, str(tmp_path))
  _check_fewshot_results(tmp_path, (1, 5), 20)
  state = _tiny_state(config)
  assert state.params['encoder']['block3']['implant_conv']['kernel'].shape[-1] == 4
