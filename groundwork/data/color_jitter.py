"""torchvision's ColorJitter(brightness, contrast, saturation) on PIL images, in JAX.

Each image draws three factors uniform in [max(0, 1 - strength), 1 + strength] and applies
brightness, contrast and saturation in a random order. Each adjustment is Pillow's
ImageEnhance: a blend `degenerate + factor * (image - degenerate)` with a black, mean-grey
or greyscale degenerate, computed in float32 and truncated to 0..255 after every step as
Pillow stores uint8. Images are float32 holding 0..255 integers, [H, W, 3] for the
adjustments and [B, H, W, 3] for `color_jitter`; outputs hold 0..255 integers too.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# The six orders of (brightness, contrast, saturation), drawn with equal probability.
ORDERS = np.array(list(itertools.permutations(range(3))), np.int32)


def _product(factor: jax.Array, difference: jax.Array) -> jax.Array:
  """factor * difference rounded once to float32, even where a compiler would fuse the add.

  Pillow (x86-64 builds) rounds the product and then the sum; an FMA rounds once and moves
  about 2 in 10,000 truncated values by one. Splitting the factor into 16 and 8 significant
  bits makes both partial products of an integer |difference| <= 255 exact, and the final
  add of the degenerate then takes no product to fuse with.
  """
  bits = jax.lax.bitcast_convert_type(factor, jnp.uint32)
  high = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFFF00), jnp.float32)
  low = factor - high
  return high * difference + low * difference


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
  factor = jnp.asarray(factor, jnp.float32)
  blended = degenerate + _product(factor, image - degenerate)
  return jnp.clip(jnp.floor(blended), 0.0, 255.0)


def grayscale(image: jax.Array) -> jax.Array:
  """Pillow's RGB -> L, ITU-R 601-2 luma in 16-bit fixed point, rounded: [H, W]."""
  rgb = image.astype(jnp.int32)
  luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
  return (luma >> 16).astype(jnp.float32)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Brightness: blend with black."""
  return _blend(jnp.zeros_like(image), image, factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast: blend with the image's mean grey level, rounded half up."""
  luma = grayscale(image).astype(jnp.int32)
  count = luma.size
  # int(sum / count + 0.5) in integers: a float32 mean would misround large sums.
  mean = (2 * jnp.sum(luma) + count) // (2 * count)
  return _blend(jnp.full_like(image, mean.astype(jnp.float32)), image, factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Color: blend with the image's greyscale."""
  degenerate = jnp.broadcast_to(grayscale(image)[..., None], image.shape)
  return _blend(degenerate, image, factor)


_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation)


def jitter_image(image: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
  """Applies the three adjustments to one [H, W, 3] image in `order`.

  Args:
    image: [H, W, 3] float32 holding 0..255 integers (rounded first, as a PIL image is uint8).
    factors: [3] brightness, contrast and saturation factors.
    order: [3] a permutation of (0, 1, 2) indexing `factors` and the adjustments.
  """
  x = jnp.round(image.astype(jnp.float32))
  for position in range(3):
    op = order[position]
    x = jax.lax.switch(op, _ADJUSTMENTS, x, factors[op])
  return x


def draw_jitter(key: jax.Array, batch: int, strength: float) -> tuple[jax.Array, jax.Array]:
  """Per image: factors [batch, 3] uniform in [max(0, 1 - strength), 1 + strength] and an
  order [batch, 3], each of the six permutations equally likely."""
  if strength < 0:
    raise ValueError(f'color jitter strength={strength} must be >= 0 (0 = off).')
  k_factors, k_order = jax.random.split(key)
  factors = jax.random.uniform(
      k_factors, (batch, 3), minval=max(0.0, 1.0 - strength), maxval=1.0 + strength
  )
  orders = jnp.asarray(ORDERS)[jax.random.randint(k_order, (batch,), 0, len(ORDERS))]
  return factors, orders


def color_jitter(key: jax.Array, x: jax.Array, strength: float) -> jax.Array:
  """ColorJitter(brightness=strength, contrast=strength, saturation=strength) per image.

  Args:
    key: PRNG key; each image's factors and order come from it.
    x: [B, H, W, 3] float32 holding 0..255 integers.
    strength: the jitter of each factor around 1 (torchvision's argument), a Python float
      >= 0 (static under jit).
  """
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f'color_jitter needs RGB images [B, H, W, 3]; got shape {x.shape}.')
  factors, orders = draw_jitter(key, x.shape[0], strength)
  return jax.vmap(jitter_image)(x, factors, orders)
