"""Mixed precision: `config.dtype` and `config.matmul_precision` in both trainers and implanting.

bfloat16 convolutions and products with float32 parameters, optimizer state, BatchNorm
statistics, logits and losses; a bfloat16 run's loss tracks the float32 one; results.json says
how a run computed; a value outside the allowed ones stops before any data is read.
"""

import functools
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl import train as fsl_train
from fsl import train_implanting
from fsl.implanting import ImplantConfig, implanted_encoder, train_implants
from groundwork import training
from groundwork.data import AugmentSpec
from groundwork.encoders import Conv4, build_encoder
from groundwork.encoders.layers import batch_norm
from semisup import classifier as ssl_classifier
from semisup import train as ssl_train
from tests.conftest import xla_optimizations_off

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'configs' / 'fsl'))
sys.path.insert(0, str(ROOT / 'configs' / 'ssl'))
import dense_classification  # noqa: E402  pylint: disable=wrong-import-position
import implanting  # noqa: E402  pylint: disable=wrong-import-position
import semi_supervised  # noqa: E402  pylint: disable=wrong-import-position

IMAGE_SHAPE = (16, 16, 3)
NUM_CLASSES = 10


@pytest.fixture(name='fast_compile')
def fixture_fast_compile():
  """Compilation dominates the tests that take a step or two; XLA's optimisations do not pay."""
  with xla_optimizations_off():
    yield


def _fsl_config(dtype: str, arg: str = 'smoke,encoder=resnet12'):
  config = dense_classification.get_config(arg)
  config.dtype = dtype
  # Plain flax layers under both dtypes, so the comparison is of the dtype alone.
  config.encoder_kwargs.cpu_kernels = False
  return config


def _dataset(n: int = 640, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Noisy images around one random template per class: learnable, not at once."""
  rng = np.random.default_rng(seed)
  templates = rng.integers(0, 256, (NUM_CLASSES, *IMAGE_SHAPE))
  labels = (np.arange(n) % NUM_CLASSES).astype(np.int32)
  noise = rng.integers(0, 160, (n, *IMAGE_SHAPE))
  return np.clip(0.4 * templates[labels] + noise, 0, 255).astype(np.uint8), labels


def _fsl_state_and_step(config):
  model = fsl_train.build_model(config, NUM_CLASSES)
  tx, _ = training.make_optimizer(config.optim, 100)
  state = fsl_train.create_state(config, model, IMAGE_SHAPE, tx)
  spec = AugmentSpec(mean=(0.5,) * 3, std=(0.25,) * 3)
  step = jax.jit(functools.partial(fsl_train.train_step, head=config.head, augment_spec=spec))
  return state, step


def _float_dtypes(tree) -> set[str]:
  return {
      str(leaf.dtype) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)
  }


def _conv_output_dtypes(fn, *args) -> set[str]:
  """The output dtypes of every convolution `fn(*args)` traces."""
  text = str(jax.make_jaxpr(fn)(*args))
  return {
      line.split(':')[1].split('[')[0]
      for line in text.splitlines()
      if 'conv_general_dilated[' in line
  }


# ---------------------------------------------------------------- the loss tracks float32


def test_bfloat16_loss_tracks_float32():
  """200 SGD steps of the few-shot train step (ResNet-12 of tiny widths, dense head, lr 0.02):
  each 25-step mean of the bfloat16 loss lies within 0.05 + 10% of the float32 one, while the
  loss falls from ~2 to ~0.05 (measured: at most 0.07 apart early, 0.005 late)."""
  images, labels = _dataset()
  curves = {}
  for dtype in ('float32', 'bfloat16'):
    config = _fsl_config(dtype)
    config.optim.lr, config.optim.schedule = 0.02, 'constant'
    state, step = _fsl_state_and_step(config)
    losses = []
    for i in range(200):
      idx = np.arange(i * 32, (i + 1) * 32) % len(labels)
      state, metrics = step(state, images[idx], labels[idx], training.step_rng(0, i))
      losses.append(float(metrics['loss']))
    curves[dtype] = np.asarray(losses).reshape(-1, 25).mean(axis=1)
  f32, bf16 = curves['float32'], curves['bfloat16']
  assert f32[-1] < 0.25 * f32[0]  # It learned: the comparison is over a falling curve.
  np.testing.assert_array_less(np.abs(bf16 - f32), 0.05 + 0.1 * f32)


# ---------------------------------------------------------------- what stays float32


@pytest.mark.parametrize('arg', ['smoke,encoder=resnet12', 'smoke,dataset=cifar_fs,recipe=rfs'])
@pytest.mark.usefixtures('fast_compile')
def test_fsl_bfloat16_computes_in_bfloat16_and_keeps_state_float32(arg):
  config = _fsl_config('bfloat16', arg)
  state, step = _fsl_state_and_step(config)
  images, labels = _dataset(16)
  for i in range(2):
    state, metrics = step(state, images, labels, training.step_rng(0, i))
  assert _float_dtypes((state.params, state.opt_state, state.batch_stats)) == {'float32'}
  assert metrics['loss'].dtype == jnp.float32
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = jnp.zeros((2, *IMAGE_SHAPE), jnp.float32)
  logits, out = state.apply_fn(variables, x, train=False)
  assert logits.dtype == out['feature_map'].dtype == out['pooled'].dtype == jnp.float32
  assert _conv_output_dtypes(lambda v: state.apply_fn(v, x, train=False), variables) == {'bf16'}


@pytest.mark.usefixtures('fast_compile')
def test_ssl_bfloat16_mean_teacher_step_keeps_state_float32():
  config = semi_supervised.get_config('smoke,dataset=digits,method=mt')
  config.dtype = 'bfloat16'
  config.encoder, config.encoder_kwargs = 'cnn13', dict(widths=(4, 8, 8, 8, 4))  # WeightNormConv.
  state = ssl_classifier.create_state(config, NUM_CLASSES, (32, 32, 3))
  step = jax.jit(
      functools.partial(
          ssl_train.train_step,
          augment_spec=AugmentSpec(mean=(0.5,) * 3, std=(0.25,) * 3),
          mean_teacher=True,
          logit_distance_cost=0.01,
          ema_decay=0.97,
      )
  )
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  labels = np.asarray([0, 1, 2, 3, -1, -1, -1, -1], np.int32)
  weights, class_weights = np.ones(8, np.float32), np.ones(NUM_CLASSES, np.float32)
  state, metrics = step(state, images, labels, weights, class_weights, 1.0, jax.random.key(0))
  trees = (state.params, state.opt_state, state.batch_stats)
  assert _float_dtypes((*trees, state.teacher_params, state.teacher_batch_stats)) == {'float32'}
  assert {v.dtype for v in metrics.values()} == {jnp.dtype(jnp.float32)}
  (class_logits, cons_logits), pooled = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats}, images[:2] / 255.0, train=False
  )
  assert class_logits.dtype == cons_logits.dtype == pooled.dtype == jnp.float32


@pytest.mark.usefixtures('fast_compile')
def test_batch_norm_keeps_float32_statistics_under_bfloat16():
  class Norm(nn.Module):

    @nn.compact
    def __call__(self, x):
      return batch_norm(nn.BatchNorm, True, jnp.bfloat16, 'bn')(x)

  x = (jax.random.normal(jax.random.key(0), (64, 4, 4, 8)) * 3.0 + 5.0).astype(jnp.bfloat16)
  variables = Norm().init(jax.random.key(1), x)
  y, updated = Norm().apply(variables, x, mutable=['batch_stats'])
  stats = updated['batch_stats']['bn']
  assert y.dtype == jnp.bfloat16
  assert stats['mean'].dtype == stats['var'].dtype == jnp.float32
  # momentum 0.9 from zeros: the running mean is a tenth of the float32 batch mean.
  expected = 0.1 * jnp.mean(x.astype(jnp.float32), axis=(0, 1, 2))
  np.testing.assert_allclose(stats['mean'], expected, rtol=1e-5)


@pytest.mark.usefixtures('fast_compile')
def test_implants_train_in_bfloat16_on_float32_variables():
  base = Conv4(width=8, pool_blocks=2, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (10, 16, 16, 3))
  frozen = base.init(jax.random.key(1), x, train=False)
  model = implanted_encoder(base, ('conv',), 4)
  config = ImplantConfig(steps=20, learning_rate=1e-2, scale=10.0)
  variables, losses = jax.jit(
      lambda f, s: train_implants(model, f, s, jnp.arange(10) % 5, jax.random.key(2), config, 5)
  )(frozen, x)
  assert _float_dtypes(variables) == {'float32'} and losses.dtype == jnp.float32
  assert losses[-1] < losses[0]
  feature_map, pooled = model.apply(variables, x, False)
  assert feature_map.dtype == pooled.dtype == jnp.float32
  assert _conv_output_dtypes(lambda v: model.apply(v, x, False), variables) == {'bf16'}


# ---------------------------------------------------------------- the CPU kernels


def test_bfloat16_encoders_use_flax_layers_never_the_cpu_kernels():
  encoder = build_encoder('conv4', dtype='bfloat16')
  assert encoder.conv is nn.Conv and encoder.norm is nn.BatchNorm
  assert encoder.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='float32 only'):
    build_encoder('resnet12', dtype='bfloat16', cpu_kernels=True)
  with pytest.raises(ValueError, match="'float16'"):
    build_encoder('conv4', dtype='float16')


# ---------------------------------------------------------------- config fields


@pytest.mark.parametrize(
    ('field', 'value'), [('dtype', 'float16'), ('matmul_precision', 'fastest')]
)
def test_invalid_precision_fields_stop_before_any_data_is_read(field, value, tmp_path):
  configs = {
      'fsl': dense_classification.get_config('smoke'),
      'ssl': semi_supervised.get_config('smoke'),
      'implanting': implanting.get_config('smoke'),
  }
  for config in configs.values():
    config[field] = value
    config.data_dir = str(tmp_path / 'nowhere')  # Reading it would fail differently.
  message = f"config.{field}='{value}' is not one of"
  for check in (fsl_train.check_config, ssl_train.check_config):
    with pytest.raises(ValueError, match=message):
      check(configs['fsl' if check is fsl_train.check_config else 'ssl'])
  with pytest.raises(ValueError, match=message):
    train_implanting.train_and_evaluate(configs['implanting'], str(tmp_path / 'imp'))
  assert not (tmp_path / 'imp').exists()


def test_matmul_precision_is_applied_while_training_and_recorded(tmp_path, monkeypatch):
  seen = []
  original = ssl_train.train_step

  def recording_step(*args, **kwargs):
    seen.append(jax.config.jax_default_matmul_precision)  # At trace time.
    return original(*args, **kwargs)

  monkeypatch.setattr(ssl_train, 'train_step', recording_step)
  config = semi_supervised.get_config('smoke,dataset=digits,method=supervised')
  config.dtype, config.matmul_precision = 'bfloat16', 'high'
  results = ssl_train.train_and_evaluate(config, str(tmp_path))
  assert seen and set(seen) == {'high'}
  written = json.loads((tmp_path / 'results.json').read_text())
  assert (
      written['precision']
      == results['precision']
      == {
          'dtype': 'bfloat16',
          'matmul_precision': 'high',
      }
  )
  assert 0.0 <= written['test']['error'] <= 1.0
