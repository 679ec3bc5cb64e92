"""Training plumbing: config args, optimiser, schedules, checkpoints, metrics, JSON."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from groundwork import training


def test_parse_args_types_flags_and_errors():
  defaults = dict(dataset='omniglot', smoke=False, labels=1000, alpha=0.99)
  got = training.parse_args('dataset=cifar10,smoke,labels=4000,alpha=0.5', defaults)
  assert got == dict(dataset='cifar10', smoke=True, labels=4000, alpha=0.5)
  with pytest.raises(ValueError, match="unknown config arg 'lables'"):
    training.parse_args('lables=3', defaults)
  with pytest.raises(ValueError, match='expected an integer'):
    training.parse_args('labels=many', defaults)
  with pytest.raises(ValueError, match=r"dataset='mnist' is not one of \['omniglot'\]"):
    training.parse_args('dataset=mnist', defaults, choices={'dataset': ('omniglot',)})


def _optim(**kw):
  base = dict(
      lr=0.1,
      momentum=0.9,
      nesterov=True,
      weight_decay=0.01,
      schedule='constant',
      epochs=10,
      decay_epochs=(2, 4),
      decay_factor=0.1,
  )
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_sgd_nesterov_with_coupled_weight_decay_matches_pytorch_rule():
  tx, _ = training.make_optimizer(_optim(), steps_per_epoch=1)
  w = jnp.asarray(2.0)
  state = tx.init(w)
  # PyTorch: d = g + wd*w; buf = m*buf + d; step = d + m*buf; w -= lr*step.
  w_ref, buf = 2.0, 0.0
  for g in (1.0, -0.5):
    d = g + 0.01 * w_ref
    buf = 0.9 * buf + d
    w_ref -= 0.1 * (d + 0.9 * buf)
    updates, state = tx.update(jnp.asarray(g), state, w)
    w = optax.apply_updates(w, updates)
  np.testing.assert_allclose(float(w), w_ref, rtol=1e-6)


def test_schedules():
  step = training.make_schedule(_optim(schedule='step'), steps_per_epoch=10)
  np.testing.assert_allclose(
      [step(0), step(19), step(20), step(40)], [0.1, 0.1, 0.01, 0.001], rtol=1e-6
  )
  cosine = training.make_schedule(_optim(schedule='cosine', epochs=2), steps_per_epoch=10)
  np.testing.assert_allclose([cosine(0), cosine(10), cosine(20)], [0.1, 0.05, 0.0], atol=1e-7)
  with pytest.raises(ValueError, match='optim.schedule'):
    training.make_schedule(_optim(schedule='poly'), 1)
  with pytest.raises(ValueError, match='optim.lr=-0.1 must be positive'):
    training.make_schedule(_optim(lr=-0.1), 1)
  with pytest.raises(ValueError, match='optim.lr=-0.1 must be positive'):
    training.make_optimizer(_optim(lr=-0.1), 1, schedule=lambda step: 0.1)


class _Tiny(nn.Module):
  features: int = 3

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(self.features)(x)


def _state(features=3):
  model = _Tiny(features)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 4)), train=False)
  return training.TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=optax.sgd(0.1, 0.9),
  )


def _step(state, x, y):
  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True, mutable=['batch_stats']
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=updates['batch_stats']), loss


def _equal_trees(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda p, q: bool(np.array_equal(p, q)), a, b)))


def test_checkpoint_round_trip_gives_equal_state_and_same_next_step(tmp_path):
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
  y = jnp.arange(8) % 3
  state, _ = _step(_state(), x, y)
  ckpt = training.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(int(state.step), state, {'epoch': np.asarray(4), 'pseudo': np.arange(5)})
  restored, extra, step = ckpt.restore(
      _state(), {'epoch': np.asarray(0), 'pseudo': np.zeros(5, np.int64)}
  )
  assert step == 1 and int(extra['epoch']) == 4
  np.testing.assert_array_equal(extra['pseudo'], np.arange(5))
  assert _equal_trees(restored.params, state.params)
  assert _equal_trees(restored.opt_state, state.opt_state)
  assert _equal_trees(restored.batch_stats, state.batch_stats)
  next_a, loss_a = _step(state, x, y)
  next_b, loss_b = _step(restored, x, y)
  assert float(loss_a) == float(loss_b)
  assert _equal_trees(next_a.params, next_b.params)


def test_restoring_another_model_names_the_mismatch(tmp_path):
  ckpt = training.Checkpointer(str(tmp_path))
  ckpt.save(0, _state(3))
  with pytest.raises(training.CheckpointMismatchError, match=r'another model.*params/Dense_0'):
    ckpt.restore(_state(5))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  ckpt = training.Checkpointer(str(tmp_path), keep=3)
  state = _state()
  ckpt.save(1, state)
  later, _ = _step(state, jnp.ones((2, 4)), jnp.zeros(2, jnp.int32))
  ckpt.save(2, later)
  # Truncate every file of the newest checkpoint.
  for root, _, files in os.walk(os.path.join(ckpt.directory, '2')):
    for name in files:
      open(os.path.join(root, name), 'w').close()
  restored = training.Checkpointer(str(tmp_path), keep=3).restore(_state())
  assert restored is not None and restored[2] == 1
  assert _equal_trees(restored[0].params, state.params)


def test_check_finite_names_the_step():
  training.check_finite(1.0, 3)
  with pytest.raises(training.NonFiniteLossError, match='at step 7.*last good checkpoint is in /w'):
    training.check_finite(float('nan'), 7, '/w')


def test_write_json_is_plain_and_atomic(tmp_path):
  path = str(tmp_path / 'r.json')
  training.write_json(path, {'a': np.float32(0.5), 'b': jnp.arange(2)})
  assert training.read_json(path) == {'a': 0.5, 'b': [0, 1]}
  assert not os.path.exists(path + '.tmp')


def test_step_rng_is_a_function_of_seed_and_step():
  a = training.step_rng(0, 5)
  assert np.array_equal(a, training.step_rng(0, 5))
  assert not np.array_equal(a, training.step_rng(0, 6))
  assert not np.array_equal(a, training.step_rng(1, 5))


def test_batch_size_must_divide_over_devices():
  mesh = training.data_mesh()
  training.check_batch_size(mesh.devices.size * 4, mesh)
  if mesh.devices.size > 1:
    with pytest.raises(ValueError, match='not divisible'):
      training.check_batch_size(mesh.devices.size + 1, mesh)


def test_map_in_batches_pads_the_last_batch_and_keeps_tuples():
  from groundwork.evaluation import map_in_batches  # pylint: disable=import-outside-toplevel

  seen = []

  def fn(batch):
    seen.append(batch.shape)
    return batch * 2, batch.sum(axis=1)

  images = np.arange(14, dtype=np.float32).reshape(7, 2)
  progress = []
  doubled, sums = map_in_batches(fn, images, 3, lambda done, total: progress.append((done, total)))
  assert seen == [(3, 2)] * 3  # One shape: a jitted fn compiles once.
  assert progress == [(3, 7), (6, 7), (7, 7)]
  np.testing.assert_array_equal(doubled, images * 2)
  np.testing.assert_array_equal(sums, images.sum(axis=1))
  with pytest.raises(ValueError, match='no images'):
    map_in_batches(fn, images[:0], 3)
