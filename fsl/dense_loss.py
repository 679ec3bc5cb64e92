"""Classification losses for the two base-training heads.

`gap_loss` classifies the globally pooled feature of each image; `dense_loss`
classifies every spatial position of the final feature map, each position
carrying its image's label (dense classification, Lifchitz et al. 2019, Sec. 3.2).
"""

import jax
import jax.numpy as jnp
import optax


def _check_labels(logits: jax.Array, labels: jax.Array, name: str) -> None:
  if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
    raise ValueError(
        f'{name}: labels must have shape [{logits.shape[0]}] (one per image), '
        f'got {labels.shape} for logits {logits.shape}.'
    )


def gap_loss(logits_pooled: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of pooled logits `[B, K]` against integer labels `[B]`."""
  if logits_pooled.ndim != 2:
    raise ValueError(f'gap_loss: logits must be [B, K], got shape {logits_pooled.shape}.')
  _check_labels(logits_pooled, labels, 'gap_loss')
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_pooled.astype(jnp.float32), labels
  ).mean()


def dense_loss(logits_map: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy averaged over all positions and images.

  Args:
    logits_map: `[B, h, w, K]` logits of every position of the feature map.
    labels: `[B]` integer labels; each position takes its image's label.

  Every image has the same number of positions, so this mean over `B*h*w`
  terms is also the mean over images of the per-image mean over positions.
  """
  if logits_map.ndim != 4:
    raise ValueError(f'dense_loss: logits must be [B, h, w, K], got shape {logits_map.shape}.')
  _check_labels(logits_map, labels, 'dense_loss')
  b, h, w, _ = logits_map.shape
  per_position = jnp.broadcast_to(labels[:, None, None], (b, h, w))
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_map.astype(jnp.float32), per_position
  ).mean()
