"""RFS's training transform: ColorJitter equal to Pillow's, pixel for pixel, and CIFAR-100 stats.

Pillow's ImageEnhance is the reference: torchvision's ColorJitter calls it on PIL images.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from configs.fsl import dense_classification
from groundwork.data import NORMALIZATION, AugmentSpec, augment, augment_batch, augment_spec_for
from groundwork.data import color_jitter as cj

KEY = jax.random.PRNGKey(0)
RNG = np.random.default_rng(0)
SIZES = [(1, 1), (3, 5), (17, 11), (32, 32)]
# RFS's range, its ends, the identity and black/grey ends, and extrapolation both ways.
FACTORS = np.concatenate(
    [[0.6, 1.4, 1.0, 0.0, 0.5, -0.7, -0.25, 1.9, 3.0], RNG.uniform(0.6, 1.4, 23)]
).astype(np.float32)
ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
ADJUSTMENTS = (cj.adjust_brightness, cj.adjust_contrast, cj.adjust_saturation)


def _pillow_chain(image: np.ndarray, factors, order) -> np.ndarray:
  pil = Image.fromarray(image)
  for op in order:
    pil = ENHANCERS[op](pil).enhance(float(factors[op]))
  return np.asarray(pil)


def _random_image(height: int, width: int) -> np.ndarray:
  return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_blend_matches_pillow_on_every_value_pair():
  # Every (degenerate, image) value pair: the cases where a fused multiply-add would round
  # a + f * (b - a) once and truncate to the next integer (about 2 in 10,000) all occur here.
  a, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing='ij')
  blend = jax.jit(jax.vmap(cj._blend, in_axes=(None, None, 0)))
  ours = np.asarray(blend(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), FACTORS))
  for factor, out in zip(FACTORS, ours):
    expected = np.asarray(Image.blend(Image.fromarray(a), Image.fromarray(b), float(factor)))
    np.testing.assert_array_equal(out, expected, err_msg=f'factor {factor}')


@pytest.mark.parametrize('op', [0, 1, 2], ids=['brightness', 'contrast', 'saturation'])
def test_each_adjustment_matches_pillow(op):
  adjust = jax.jit(jax.vmap(ADJUSTMENTS[op], in_axes=(None, 0)))
  for height, width in SIZES:
    image = _random_image(height, width)
    ours = np.asarray(adjust(jnp.asarray(image, jnp.float32), FACTORS))
    for factor, out in zip(FACTORS, ours):
      expected = np.asarray(ENHANCERS[op](Image.fromarray(image)).enhance(float(factor)))
      np.testing.assert_array_equal(out, expected, err_msg=f'{(height, width)}, factor {factor}')


def test_grayscale_matches_pillow_on_a_colour_grid():
  channel = np.arange(0, 256, 3, dtype=np.uint8)
  grid = np.stack(np.meshgrid(channel, channel, channel, indexing='ij'), -1).reshape(-1, 86, 3)
  expected = np.asarray(Image.fromarray(grid).convert('L'))
  np.testing.assert_array_equal(cj.grayscale(jnp.asarray(grid, jnp.float32)), expected)


def test_chain_matches_pillow_in_every_order():
  jitter = jax.jit(cj.jitter_image)
  for order in cj.ORDERS:
    for height, width in SIZES:
      image = _random_image(height, width)
      factors = RNG.uniform(0.6, 1.4, 3).astype(np.float32)
      out = jitter(jnp.asarray(image, jnp.float32), factors, order)
      np.testing.assert_array_equal(out, _pillow_chain(image, factors, order))


def test_color_jitter_applies_its_draws_like_pillow():
  images = RNG.integers(0, 256, (24, 6, 7, 3), dtype=np.uint8)
  out = np.asarray(jax.jit(cj.color_jitter, static_argnums=2)(KEY, jnp.asarray(images), 0.4))
  factors, orders = cj.draw_jitter(KEY, len(images), 0.4)
  assert len({tuple(o) for o in np.asarray(orders)}) > 1
  for image, result, f, order in zip(images, out, np.asarray(factors), np.asarray(orders)):
    np.testing.assert_array_equal(result, _pillow_chain(image, f, order))


def test_draws_cover_the_range_and_every_order_equally():
  n = 60_000
  factors, orders = (np.asarray(v) for v in cj.draw_jitter(KEY, n, 0.4))
  assert factors.min() >= 0.6 and factors.max() <= 1.4
  # Uniform on [0.6, 1.4]: mean 1, sd 0.8 / sqrt(12); each column within 5 standard errors.
  np.testing.assert_allclose(factors.mean(0), 1.0, atol=5 * 0.8 / np.sqrt(12 * n))
  np.testing.assert_allclose(
      np.quantile(factors, [0.1, 0.5, 0.9], axis=0).T, [[0.68, 1.0, 1.32]] * 3, atol=0.01
  )
  assert np.corrcoef(factors.T)[np.triu_indices(3, 1)].max() < 0.02  # Drawn independently.
  assert (np.sort(orders, 1) == [0, 1, 2]).all()
  counts = np.array([(orders == order).all(1).sum() for order in cj.ORDERS])
  expected = n / 6
  assert np.abs(counts - expected).max() < 5 * np.sqrt(expected * 5 / 6), counts
  # Beyond strength 1 the lower bound stops at 0, as torchvision's.
  wide = np.asarray(cj.draw_jitter(KEY, 1000, 1.5)[0])
  assert wide.min() >= 0.0 and wide.max() <= 2.5 and (wide < 0.1).any()


def _jitted(spec):
  return jax.jit(lambda key, images: augment_batch(key, images, spec))


@pytest.mark.parametrize('dataset', ['cifar_fs', 'cifar10'])
def test_off_leaves_augment_batch_bit_identical(dataset):
  images = jnp.asarray(RNG.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8))
  spec = augment_spec_for(dataset)
  assert spec.color_jitter == 0.0
  explicit = dataclasses.replace(spec, color_jitter=0.0)
  out = _jitted(spec)(KEY, images)
  np.testing.assert_array_equal(out, _jitted(explicit)(KEY, images))

  @jax.jit
  def by_hand(key, images):  # With the keys augment_batch has always drawn.
    k_crop, k_translate, k_flip, _ = jax.random.split(key, 4)
    x = images.astype(jnp.float32)
    x = augment.random_crop(k_crop, x, spec.crop_padding) if spec.crop_padding else x
    x = augment.random_translate(k_translate, x, spec.translate) if spec.translate else x
    return augment.normalize(augment.random_flip(k_flip, x), spec.mean, spec.std)

  np.testing.assert_array_equal(out, by_hand(KEY, images))


def test_on_jitters_after_the_crop_and_keeps_the_other_draws():
  images = jnp.asarray(RNG.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8))
  spec = augment_spec_for('cifar_fs', color_jitter=0.4)
  out = _jitted(spec)(KEY, images)

  @jax.jit
  def by_hand(key, images):
    k_crop, _, k_flip, _ = jax.random.split(key, 4)
    x = augment.random_crop(k_crop, images.astype(jnp.float32), 4)
    # The crop's zero padding is part of the image whose mean grey the contrast blends to.
    x = cj.color_jitter(jax.random.fold_in(key, augment._COLOR_JITTER_STREAM), x, 0.4)
    return augment.normalize(augment.random_flip(k_flip, x), spec.mean, spec.std)

  np.testing.assert_array_equal(out, by_hand(KEY, images))
  off = _jitted(augment_spec_for('cifar_fs'))(KEY, images)
  assert not np.array_equal(out, off)


def test_rfs_config_jitters_and_lifchitz_does_not():
  for dataset in ('miniimagenet', 'cifar_fs', 'fc100'):
    rfs = dense_classification.get_config(f'dataset={dataset},recipe=rfs')
    assert rfs.augment.color_jitter == 0.4
    spec = augment_spec_for(dataset, train=True, **rfs.augment)
    assert spec == augment_spec_for(dataset, color_jitter=0.4)
  for dataset in ('omniglot', 'miniimagenet', 'cifar_fs'):
    lifchitz = dense_classification.get_config(f'dataset={dataset}')
    assert lifchitz.augment.color_jitter == 0.0
    assert augment_spec_for(dataset, **lifchitz.augment) == augment_spec_for(dataset)


def test_jitter_needs_rgb_and_a_nonnegative_strength():
  with pytest.raises(ValueError, match=r'AugmentSpec.color_jitter=0.4 needs RGB images'):
    augment_batch(KEY, jnp.zeros((2, 4, 4, 1), jnp.uint8), AugmentSpec(color_jitter=0.4))
  with pytest.raises(ValueError, match=r'AugmentSpec.color_jitter=-0.1 must be >= 0'):
    augment_batch(KEY, jnp.zeros((2, 4, 4, 3), jnp.uint8), AugmentSpec(color_jitter=-0.1))


def test_cifar_fewshot_sets_use_cifar100_statistics():
  rfs = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
  assert NORMALIZATION['cifar_fs'] == NORMALIZATION['fc100'] == rfs
  assert augment_spec_for('fc100', train=False).mean == rfs[0]
  assert NORMALIZATION['cifar10'] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
