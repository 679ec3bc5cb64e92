"""Implanting: original features untouched, frozen variables bit-identical, vmap equals loop,
implanted blocks built from the encoder's own blocks and layers."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fsl.implanting import (
    ImplantConfig,
    ImplantedConv4Block,
    ImplantedResNet12Block,
    implant_episode,
    implant_episode_accuracies,
    implanted_encoder,
    init_implants,
    merge_implants,
    split_implants,
    train_implants,
    wide_control_encoder,
)
from groundwork.encoders import Conv4, Conv4Block, ResNet12, ResNet12Block, ResNet18Tiny

CONFIG = ImplantConfig(steps=2, learning_rate=1e-2, scale=10.0)


pytestmark = pytest.mark.usefixtures('fast_compiles')  # Compilation dominates these tests.


def _trained_like(base, x):
  """Base variables whose BN statistics are not the init's (one train-mode pass)."""
  variables = base.init(jax.random.PRNGKey(1), x, train=False)
  _, updated = base.apply(variables, x, train=True, mutable=['batch_stats'])
  return {'params': variables['params'], 'batch_stats': updated['batch_stats']}


def _flat(tree):
  return traverse_util.flatten_dict(tree)


@pytest.mark.parametrize(
    'base,layers,size,channels',
    [
        (ResNet12(widths=(4, 4, 4, 4)), ('conv1', 'conv2'), 32, 4),
        (Conv4(width=8), ('conv',), 16, 8),
    ],
)
def test_original_channels_equal_the_base_encoder(base, layers, size, channels):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 3))
  frozen = _trained_like(base, x)
  model = implanted_encoder(base, layers, width=2)
  base_map, _ = base.apply(frozen, x, train=False)
  maps = [
      model.apply(merge_implants(frozen, init_implants(model, jax.random.PRNGKey(s), x)), x, False)[
          0
      ]
      for s in (2, 3)
  ]
  for fmap in maps:
    assert fmap.shape == base_map.shape[:-1] + (channels + 2,)
    np.testing.assert_array_equal(fmap[..., :channels], base_map)
  assert not np.allclose(maps[0][..., channels:], maps[1][..., channels:])


def test_implant_sees_previous_implant_channels():
  model = implanted_encoder(ResNet12(widths=(4, 4, 4, 4)), ('conv0', 'conv1', 'conv2'), width=2)
  params = init_implants(model, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params'][
      'block3'
  ]
  # conv0's implant sees the block input (4 original channels); later ones see 4 + 2.
  assert params['implant_conv0']['kernel'].shape == (3, 3, 4, 2)
  assert params['implant_conv1']['kernel'].shape == (3, 3, 6, 2)
  assert params['implant_conv2']['kernel'].shape == (3, 3, 6, 2)


def test_training_changes_only_implants():
  base = ResNet12(widths=(4, 4, 4, 4))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  labels = jnp.array([0, 1, 0, 1])
  frozen = _trained_like(base, x)
  model = implanted_encoder(base, ('conv0', 'conv1', 'conv2'), width=2)
  key = jax.random.PRNGKey(5)
  variables, losses = jax.jit(
      lambda k: train_implants(model, frozen, x, labels, k, CONFIG, n_way=2)
  )(key)
  original, implants = split_implants(variables)
  assert _flat(original).keys() == _flat(frozen).keys()
  for path, value in _flat(frozen).items():
    assert np.array_equal(_flat(original)[path], value), path  # bit-identical
  start = _flat(init_implants(model, jax.random.split(key)[0], x[:1])['params'])
  trained = _flat(implants['params'])
  assert all(not np.array_equal(trained[p], start[p]) for p in start if p[-1] == 'kernel')
  assert losses.shape == (2,) and np.all(np.isfinite(losses))


def test_vmap_over_episodes_equals_loop():
  base = Conv4(width=8)
  images = jax.random.normal(jax.random.PRNGKey(0), (12, 16, 16, 1))
  frozen = _trained_like(base, images)
  model = implanted_encoder(base, ('conv',), width=2)
  support_idx = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)
  query_idx = np.array([[8, 9, 10, 11], [11, 10, 9, 8]], np.int32)
  s_lab = np.array([[0, 0, 1, 1], [0, 1, 0, 1]], np.int32)
  q_lab = np.array([[0, 1, 0, 1], [1, 1, 0, 0]], np.int32)
  key = jax.random.PRNGKey(7)

  def episode(s, sl, q, k):
    return implant_episode(model, frozen, images[s], sl, images[q], k, CONFIG, n_way=2)

  keys = jnp.stack([jax.random.fold_in(key, e) for e in range(2)])
  batched = jax.jit(jax.vmap(episode))(support_idx, s_lab, query_idx, keys)
  single = jax.jit(episode)
  looped = np.stack([single(support_idx[e], s_lab[e], query_idx[e], keys[e]) for e in range(2)])
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)

  episodes = type(
      'Episodes',
      (),
      dict(support_idx=support_idx, query_idx=query_idx, support_labels=s_lab, query_labels=q_lab),
  )
  accuracies = implant_episode_accuracies(
      model, frozen, images, episodes, key, CONFIG, batch_size=2
  )
  np.testing.assert_allclose(accuracies, (looped.argmax(-1) == q_lab).mean(-1))


def test_bad_implant_settings_name_allowed_values():
  with pytest.raises(ValueError, match=r"'conv3'.*\['conv0', 'conv1', 'conv2'\]"):
    implanted_encoder(ResNet12(widths=(4, 4, 4, 4)), ('conv3',), width=2)
  with pytest.raises(ValueError, match='must be the last layers'):
    implanted_encoder(ResNet12(widths=(4, 4, 4, 4)), ('conv0', 'conv1'), width=2)
  with pytest.raises(ValueError, match=r"'conv2'.*\['conv'\]"):
    implanted_encoder(Conv4(width=8), ('conv2',), width=2)
  with pytest.raises(ValueError, match='at least 1'):
    implanted_encoder(Conv4(width=8), ('conv',), width=0)
  with pytest.raises(ValueError, match='ResNet18'):
    implanted_encoder(ResNet18Tiny(), ('conv',), width=2)
  with pytest.raises(ValueError, match="'adam', 'sgd'"):
    ImplantConfig(optimizer='rmsprop')


def test_wide_control_trains_every_layer_and_matches_implant_size():
  base = Conv4(width=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
  control = wide_control_encoder(base, ('conv',), width=2)
  variables = control.init(jax.random.PRNGKey(1), x, train=False)
  (fmap, pooled), updated = control.apply(variables, x, True, mutable=['batch_stats'])
  assert fmap.shape == (4, 1, 1, 10) and pooled.shape == (4, 10)
  # Unlike implanting, train mode moves the original BatchNorm statistics too.
  changed = [
      p
      for p, v in _flat(updated['batch_stats']).items()
      if not np.array_equal(v, _flat(variables['batch_stats'])[p])
  ]
  assert ('block0', 'bn', 'mean') in changed and ('block3', 'implant_bn', 'mean') in changed
  # Same parameters as Conv-4 plus the implants: 3*3*8*2 + 2 (conv) + 2*2 (BN).
  count = lambda tree: sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(tree))
  assert (
      count(variables['params'])
      == count(base.init(jax.random.PRNGKey(1), x, train=False)['params']) + 150
  )


@pytest.mark.parametrize(
    'base,layers,size',
    [
        (ResNet12(widths=(4, 4, 4, 4)), ('conv1', 'conv2'), 32),
        (Conv4(width=8), ('conv',), 16),
    ],
)
def test_implant_branch_on_the_cached_frozen_branch_equals_the_full_block(base, layers, size):
  """Training steps run only the implants on a cached frozen branch: same output,
  same implant gradients and BN statistics as the whole last block."""
  from fsl.implanting import ImplantedEncoder  # pylint: disable=import-outside-toplevel

  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 3))
  frozen = _trained_like(base, x)
  model = implanted_encoder(base, layers, width=2)
  implants = init_implants(model, jax.random.PRNGKey(2), x)

  def run(params, method, inputs):
    variables = merge_implants(frozen, {'params': params, 'batch_stats': implants['batch_stats']})
    (fmap, pooled), updated = model.apply(
        variables, inputs, True, method=method, mutable=['batch_stats']
    )
    return jnp.sum(fmap**2) + jnp.sum(jnp.sin(pooled)), (fmap, updated)

  h = model.apply(frozen, x, method=ImplantedEncoder.prefix)
  originals = model.apply(frozen, x, method=ImplantedEncoder.frozen_branch)
  full = jax.value_and_grad(run, has_aux=True)(implants['params'], ImplantedEncoder.last_block, h)
  cached = jax.value_and_grad(run, has_aux=True)(
      implants['params'], ImplantedEncoder.implant_branch, originals
  )
  np.testing.assert_allclose(cached[0][1][0], full[0][1][0], rtol=1e-6, atol=1e-6)
  for tree_cached, tree_full in ((cached[1], full[1]), (cached[0][1][1], full[0][1][1])):
    flat_full = _flat(tree_full)
    assert _flat(tree_cached).keys() == flat_full.keys()
    for k, v in _flat(tree_cached).items():
      np.testing.assert_allclose(v, flat_full[k], rtol=1e-5, atol=1e-6, err_msg=str(k))
  with pytest.raises(ValueError, match='frozen base'):
    wide = wide_control_encoder(base, layers, width=2)
    wide.apply(
        wide.init(jax.random.PRNGKey(3), x, train=False), x, method=ImplantedEncoder.frozen_branch
    )


@pytest.mark.parametrize(
    'plain,implanted,channels',
    [
        (
            ResNet12Block(4, activation='swish'),
            ImplantedResNet12Block(
                4, activation='swish', implant_layers=('conv1', 'conv2'), implant_width=2
            ),
            4,
        ),
        (Conv4Block(3), ImplantedConv4Block(3, implant_layers=('conv',), implant_width=2), 3),
    ],
)
def test_implanted_blocks_compute_the_plain_blocks_original_channels(plain, implanted, channels):
  # 9x9: the max-pool floors odd sizes on the concatenated map as on the plain one.
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 9, 4))
  frozen = _trained_like(plain, x)
  variables = merge_implants(
      frozen, split_implants(implanted.init(jax.random.PRNGKey(2), x, train=False))[1]
  )
  # The plain block's own variables, under its own names, plus the implants only.
  assert {
      k: v for k, v in _flat(variables).items() if 'implant_' not in '/'.join(k)
  }.keys() == _flat(frozen).keys()
  expected = plain.apply(frozen, x, train=False)
  for train in (False, True):  # train switches the implant BatchNorms only
    out, _ = implanted.apply(variables, x, train, mutable=['batch_stats'])
    assert out.shape == expected.shape[:-1] + (channels + 2,)
    np.testing.assert_array_equal(out[..., :channels], expected)
  originals = implanted.apply(variables, x, False, originals_only=True)
  np.testing.assert_array_equal(originals[0], x)
  # The last original activation, max-pooled, is the plain block's output (no DropBlock here).
  np.testing.assert_array_equal(
      nn.max_pool(originals[-1], (2, 2), strides=(2, 2), padding='VALID'), expected
  )

  # DC+WIDE trains the original layers: batch statistics and their updates as the plain block's.
  wide = implanted.clone(base_trainable=True)
  out, updated = wide.apply(variables, x, True, mutable=['batch_stats'])
  expected, expected_updated = plain.apply(frozen, x, True, mutable=['batch_stats'])
  np.testing.assert_allclose(out[..., :channels], expected, rtol=1e-6, atol=1e-6)
  for path, value in _flat(expected_updated).items():
    np.testing.assert_allclose(_flat(updated)[path], value, rtol=1e-6, atol=1e-7)


def _recording_layers(calls):
  """conv, norm and pool fields that append to `calls` what they make or compute."""

  def conv_general_dilated(*args, **kwargs):
    calls.append(('conv',))
    return jax.lax.conv_general_dilated(*args, **kwargs)

  class Norm(nn.BatchNorm):

    @nn.compact
    def __call__(self, *args, **kwargs):
      calls.append(('norm', '/'.join(self.scope.path), self.momentum))
      return super().__call__(*args, **kwargs)

  def pool(x, window_shape, strides=None, padding='VALID'):
    calls.append(('pool',))
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)

  return dict(
      conv=functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated),
      norm=Norm,
      pool=pool,
  )


@pytest.mark.parametrize('build,momentum', [(implanted_encoder, 0.0), (wide_control_encoder, 0.9)])
def test_implanted_encoder_uses_the_base_encoders_layers(build, momentum):
  calls = []
  base = ResNet12(widths=(4, 4, 4, 4), **_recording_layers(calls))
  model = build(base, ('conv2',), width=2)
  assert (model.conv, model.norm, model.pool) == (base.conv, base.norm, base.pool)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jnp.zeros((1, 16, 16, 3))
  )
  # 4 blocks of 4 convs plus one implant conv, 4 max-pools; every BatchNorm is the base's.
  assert calls.count(('conv',)) == 17 and calls.count(('pool',)) == 4
  norms = {c[1]: c[2] for c in calls if c[0] == 'norm'}
  assert sorted(norms) == sorted(
      '/'.join(p[:-1]) for p in _flat(variables['batch_stats']) if p[-1] == 'mean'
  )
  assert norms.pop('block3/implant_bn2') == momentum
  assert set(norms.values()) == {0.9}


def test_unrolled_implant_training_gives_the_same_numbers():
  base = Conv4(width=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
  labels = jnp.array([0, 1, 0, 1])
  frozen = _trained_like(base, x)
  model = implanted_encoder(base, ('conv',), width=2)

  def train(config):
    return lambda k: train_implants(model, frozen, x, labels, k, config, n_way=2)

  assert not CONFIG.unroll  # the default keeps the loop; train_implanting sets it per platform
  # SGD: Adam would scale up the rounding noise in the gradient of the conv bias in front of a
  # BatchNorm (zero in exact arithmetic), which differs between the two compiled programs.
  config = dataclasses.replace(CONFIG, optimizer='sgd')
  unrolled = dataclasses.replace(config, unroll=True)
  assert f'unroll={CONFIG.steps}' in str(jax.make_jaxpr(train(unrolled))(jax.random.PRNGKey(5)))
  assert 'unroll=1' in str(jax.make_jaxpr(train(config))(jax.random.PRNGKey(5)))
  looped = jax.jit(train(config))(jax.random.PRNGKey(5))
  straight = jax.jit(train(unrolled))(jax.random.PRNGKey(5))
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), straight, looped
  )
  assert straight[1][1] < straight[1][0]  # the loss falls: the steps did train
