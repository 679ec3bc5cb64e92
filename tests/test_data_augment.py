"""On-device augmentation: shapes, ranges, exact geometry and determinism under a key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from groundwork.data import NORMALIZATION, AugmentSpec, augment, augment_batch, augment_spec_for

KEY = jax.random.PRNGKey(0)
# Distinct pixel values, so a shifted window identifies its offset.
IMAGES = np.random.default_rng(0).permutation(16 * 9 * 9 * 2).reshape(16, 9, 9, 2) % 251 + 1
IMAGES = IMAGES.astype(np.uint8)


def _windows(padded: np.ndarray, size: int):
  span = padded.shape[0] - size
  return [padded[y : y + size, x : x + size] for y in range(span + 1) for x in range(span + 1)]


@pytest.mark.parametrize('mode', ['crop', 'translate'])
def test_crop_and_translate_are_shifted_windows(mode):
  shift = 3
  if mode == 'crop':
    out = np.asarray(augment.random_crop(KEY, jnp.asarray(IMAGES), shift))
    pad = dict(mode='constant')
  else:
    out = np.asarray(augment.random_translate(KEY, jnp.asarray(IMAGES), shift))
    pad = dict(mode='reflect')
  assert out.shape == IMAGES.shape and out.dtype == np.uint8
  offsets_seen = set()
  for image, result in zip(IMAGES, out):
    padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), **pad)
    matches = [i for i, w in enumerate(_windows(padded, 9)) if np.array_equal(w, result)]
    assert len(matches) == 1
    offsets_seen.add(matches[0])
  assert len(offsets_seen) > 4  # Offsets vary between images.
  if mode == 'translate':
    assert np.all(out > 0)  # Reflection fills with image content, never with zeros.


def test_flip_mirrors_some_images():
  out = np.asarray(augment.random_flip(KEY, jnp.asarray(IMAGES)))
  flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, IMAGES)]
  kept = [np.array_equal(o, x) for o, x in zip(out, IMAGES)]
  assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16


@pytest.mark.parametrize('order', [0, 1])
def test_rotation_by_right_angles_is_exact(order):
  x = jnp.asarray(IMAGES[:2])
  quarter = augment.rotate(x, jnp.array([90.0, -90.0]), order)
  np.testing.assert_array_equal(quarter[0], np.rot90(IMAGES[0]))  # Counter-clockwise.
  np.testing.assert_array_equal(quarter[1], np.rot90(IMAGES[1], -1))
  np.testing.assert_array_equal(augment.rotate(x, jnp.zeros(2), order), IMAGES[:2])


def test_rotation_of_a_hand_made_image():
  # One pixel 4 to the right of the centre (4, 4); 10 degrees counter-clockwise takes it to
  # row 4 - 4 sin 10 = 3.31, column 4 + 4 cos 10 = 7.94: nearest pixel (3, 8), alone.
  x = np.zeros((1, 9, 9, 1), np.uint8)
  x[0, 4, 8] = 200
  out = np.asarray(augment.rotate(jnp.asarray(x), jnp.array([10.0]), order=0))
  expected = np.zeros_like(x)
  expected[0, 3, 8] = 200
  np.testing.assert_array_equal(out, expected)


def test_augment_batch_rotates_before_cropping_and_flipping():
  # LP-DeepSSL's miniImageNet order: RandomRotation(10), RandomCrop(pad 8), flip.
  spec = AugmentSpec(crop_padding=2, flip=True, rotate_degrees=10.0, rotate_order=0)
  out = np.asarray(augment_batch(KEY, jnp.asarray(IMAGES), spec)) * 255.0
  k_crop, _, k_flip, k_rotate = jax.random.split(KEY, 4)
  x = jnp.asarray(IMAGES, jnp.float32)
  rotated_first = augment.random_flip(
      k_flip, augment.random_crop(k_crop, augment.random_rotate(k_rotate, x, 10.0, 0), 2)
  )
  np.testing.assert_allclose(out, rotated_first, atol=1e-3)
  rotated_last = augment.random_rotate(
      k_rotate, augment.random_flip(k_flip, augment.random_crop(k_crop, x, 2)), 10.0, 0
  )
  assert np.abs(out - np.asarray(rotated_last)).max() > 1


def test_random_rotation_fills_corners_with_zero():
  ones = jnp.full((8, 9, 9, 1), 200, jnp.uint8)
  out = np.asarray(augment.random_rotate(KEY, ones, max_degrees=10.0))
  assert out.dtype == np.uint8 and out.shape == ones.shape
  assert np.all(out[:, 4, 4] == 200)  # The centre stays.
  assert np.all(out.max() <= 200) and np.any(out[:, 0, 0] < 200)  # Corners leave the image.


def test_normalize_by_hand():
  x = jnp.array([[[[0, 255, 51]]]], jnp.uint8)
  out = augment.normalize(x, (0.0, 0.5, 0.2), (1.0, 0.25, 0.1))
  np.testing.assert_allclose(out, [[[[0.0, 2.0, 0.0]]]], atol=1e-6)
  assert out.dtype == jnp.float32


def test_normalization_constants():
  mean, std = NORMALIZATION['miniimagenet']
  np.testing.assert_allclose(mean, [0.47216, 0.45329, 0.40996], atol=1e-5)
  np.testing.assert_allclose(std, [0.27718, 0.26776, 0.28451], atol=1e-5)
  assert NORMALIZATION['cifar10'] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_augment_batch_shapes_ranges_determinism():
  spec = AugmentSpec(
      crop_padding=2, translate=1, flip=True, rotate_degrees=10.0, mean=(0.5, 0.5), std=(0.25, 0.25)
  )
  run = jax.jit(augment_batch, static_argnames='spec')
  out = run(KEY, jnp.asarray(IMAGES), spec=spec)
  assert out.shape == IMAGES.shape and out.dtype == jnp.float32
  assert float(out.min()) >= (0 - 0.5) / 0.25 and float(out.max()) <= (1 - 0.5) / 0.25
  np.testing.assert_array_equal(out, run(KEY, jnp.asarray(IMAGES), spec=spec))
  assert not np.array_equal(out, run(jax.random.PRNGKey(1), jnp.asarray(IMAGES), spec=spec))
  # Mean Teacher's two views use independent keys.
  view1, view2 = augment.two_views(KEY, jnp.asarray(IMAGES), spec)
  assert not np.array_equal(view1, view2)
  k1, _ = jax.random.split(KEY)
  np.testing.assert_allclose(view1, run(k1, jnp.asarray(IMAGES), spec=spec), atol=1e-5)


def test_dataset_defaults():
  mini = augment_spec_for('miniimagenet')
  assert (mini.crop_padding, mini.flip, mini.mean) == (8, True, NORMALIZATION['miniimagenet'][0])
  omniglot = augment_spec_for('omniglot')
  assert not omniglot.flip and omniglot.rotate_degrees == 10.0
  assert augment_spec_for('cifar10').translate == 4 and augment_spec_for('fc100').crop_padding == 4
  evaluation = augment_spec_for('cifar10', train=False)
  assert (evaluation.translate, evaluation.flip) == (0, False)
  identity = augment_batch(KEY, jnp.full((1, 2, 2, 3), 255, jnp.uint8), evaluation)
  np.testing.assert_allclose(
      identity[0, 0, 0],
      (1 - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2470, 0.2435, 0.2616]),
      rtol=1e-5,
  )
  with pytest.raises(ValueError, match='No augmentation defaults'):
    augment_spec_for('imagenet')
