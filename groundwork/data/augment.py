"""Image augmentation on device, inside jit.

Every function is pure and takes a PRNG key derived from the step's key, so a
resumed run draws the same augmentations. Images are batches [B, H, W, C];
geometric functions return the dtype they are given (integer inputs are
rounded back), `normalize` and `augment_batch` return float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

# Re-exported: the per-dataset defaults live where configs can read them without JAX.
from groundwork.data.augment_spec import NORMALIZATION, AugmentSpec, augment_spec_for
from groundwork.data.color_jitter import color_jitter

# Colour jitter's key is folded from the step's key, so that without it the other
# augmentations draw exactly what they drew before it existed.
_COLOR_JITTER_STREAM = 0x0C01


def _restore_dtype(x: jax.Array, dtype) -> jax.Array:
  if jnp.issubdtype(dtype, jnp.integer):
    info = jnp.iinfo(dtype)
    x = jnp.clip(jnp.round(x), info.min, info.max)
  return x.astype(dtype)


def _random_window(key: jax.Array, padded: jax.Array, height: int, width: int) -> jax.Array:
  """A height x width window of each padded image at a uniform random offset."""
  batch, padded_h, padded_w, channels = padded.shape
  ky, kx = jax.random.split(key)
  top = jax.random.randint(ky, (batch,), 0, padded_h - height + 1)
  left = jax.random.randint(kx, (batch,), 0, padded_w - width + 1)

  def window(image, y, x):
    return jax.lax.dynamic_slice(image, (y, x, 0), (height, width, channels))

  return jax.vmap(window)(padded, top, left)


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
  """Zero-pads each side by `padding` and crops back to the original size."""
  _, height, width, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return _random_window(key, padded, height, width)


def random_translate(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image by up to ±max_shift pixels per axis, filling by reflection."""
  _, height, width, _ = x.shape
  padded = jnp.pad(
      x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode='reflect'
  )
  return _random_window(key, padded, height, width)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def rotate(x: jax.Array, degrees: jax.Array, order: int = 1) -> jax.Array:
  """Rotates each image counter-clockwise by degrees[b] about its centre, zero fill.

  Args:
    x: [B, H, W, C].
    degrees: [B].
    order: 1 for bilinear, 0 for nearest-neighbour sampling.
  """
  _, height, width, _ = x.shape
  dtype = x.dtype
  rows, cols = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing='ij'
  )
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0

  def one(image, angle_degrees):
    # Output pixel p samples the input at R(-angle) (p - centre) + centre,
    # with rows pointing down so a positive angle turns the picture counter-clockwise.
    theta = jnp.deg2rad(angle_degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    dy, dx = rows - cy, cols - cx
    src_rows = cos * dy + sin * dx + cy
    src_cols = -sin * dy + cos * dx + cx

    def channel(plane):
      return ndimage.map_coordinates(
          plane, [src_rows, src_cols], order=order, mode='constant', cval=0.0
      )

    return jax.vmap(channel, in_axes=2, out_axes=2)(image.astype(jnp.float32))

  return _restore_dtype(jax.vmap(one)(x, degrees), dtype)


def random_rotate(key: jax.Array, x: jax.Array, max_degrees: float, order: int = 1) -> jax.Array:
  """Rotates each image by an angle uniform in [-max_degrees, max_degrees]."""
  degrees = jax.random.uniform(key, (x.shape[0],), minval=-max_degrees, maxval=max_degrees)
  return rotate(x, degrees, order)


def normalize(x: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """(x / 255 - mean) / std per channel, float32; x holds 0..255 intensities."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x.astype(jnp.float32) / 255.0 - mean) / std


def augment_batch(key: jax.Array, images: jax.Array, spec: AugmentSpec) -> jax.Array:
  """Applies `spec` to uint8 (or 0..255 float) images; returns normalised float32.

  Rotation comes first, about the uncropped image's centre, then crop, translation and
  flip: torchvision's order in LP-DeepSSL's miniImageNet transform (RandomRotation(10),
  RandomCrop(84, padding=8), RandomHorizontalFlip). Colour jitter comes before the flip and
  after the crop, as in RFS, so the crop's zero padding counts in the contrast's mean.
  """
  if spec.color_jitter and images.shape[-1] != 3:
    raise ValueError(
        f'AugmentSpec.color_jitter={spec.color_jitter} needs RGB images; these have '
        f'{images.shape[-1]} channel(s): set color_jitter=0 for them.'
    )
  if spec.color_jitter < 0:
    raise ValueError(
        f'AugmentSpec.color_jitter={spec.color_jitter} must be >= 0 (0 = off; RFS uses 0.4).'
    )
  k_crop, k_translate, k_flip, k_rotate = jax.random.split(key, 4)
  x = images.astype(jnp.float32)
  if spec.rotate_degrees:
    x = random_rotate(k_rotate, x, spec.rotate_degrees, spec.rotate_order)
  if spec.crop_padding:
    x = random_crop(k_crop, x, spec.crop_padding)
  if spec.translate:
    x = random_translate(k_translate, x, spec.translate)
  if spec.color_jitter:
    x = color_jitter(jax.random.fold_in(key, _COLOR_JITTER_STREAM), x, spec.color_jitter)
  if spec.flip:
    x = random_flip(k_flip, x)
  return normalize(x, spec.mean, spec.std)


def two_views(key: jax.Array, images: jax.Array, spec: AugmentSpec) -> tuple[jax.Array, jax.Array]:
  """Two independently augmented views of each image (Mean Teacher's student and teacher)."""
  k1, k2 = jax.random.split(key)
  return augment_batch(k1, images, spec), augment_batch(k2, images, spec)
