"""Cosine classifier: class scores are scaled cosine similarities.

Features and class weights are L2-normalised, so a score is `scale * cos`;
the scale is learned because cosines in [-1, 1] alone give too flat a softmax
to train with cross-entropy (Lifchitz et al. 2019, Sec. 3; Gidaris & Komodakis 2018).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """`x / ||x||` along `axis`; a zero vector stays zero instead of becoming NaN."""
  x = jnp.asarray(x, jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


class CosineClassifier(nn.Module):
  """Scaled cosine similarity between features `[..., C]` and `num_classes` weights.

  Acts on the last axis only, so the same module classifies pooled features
  `[B, C]` (GAP head) or every position of a feature map `[B, h, w, C]` (dense
  head), returning `[..., num_classes]` float32 logits.

  Params: `weight` `[C, num_classes]` and the scalar `scale` (initialised at
  `scale_init`).
  """

  num_classes: int
  scale_init: float = 10.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param(
        'weight', nn.initializers.lecun_normal(), (x.shape[-1], self.num_classes), jnp.float32
    )
    scale = self.param('scale', nn.initializers.constant(self.scale_init), (), jnp.float32)
    return scale * (l2_normalize(x) @ l2_normalize(weight, axis=0))
