"""Imprinted class prototypes and cosine scoring of queries (novel-class inference).

A prototype is the L2-normalised mean of the L2-normalised support features of
a class (weight imprinting, Qi et al. 2018), so a 1-shot prototype is the
support feature's direction. The pooled scoring is the paper's test-time rule;
`dense_scores` is the optional variant that scores every query position.
"""

import jax
import jax.numpy as jnp

from fsl.cosine_classifier import l2_normalize


def imprint_prototypes(
    support_features: jax.Array, support_labels: jax.Array, n_way: int
) -> jax.Array:
  """Prototypes `[n_way, C]` from support features `[S, C]` and labels `[S]` in 0..n_way-1.

  `n_way` is static (a Python int) so this jits and vmaps over episodes.
  A class with no support example gets a zero prototype (cosine 0 to everything).
  """
  if support_features.ndim != 2 or support_labels.shape != support_features.shape[:1]:
    raise ValueError(
        f'imprint_prototypes: want features [S, C] and labels [S], got '
        f'{support_features.shape} and {support_labels.shape}.'
    )
  one_hot = jax.nn.one_hot(support_labels, n_way, dtype=jnp.float32)  # [S, n_way]
  sums = one_hot.T @ l2_normalize(support_features)  # [n_way, C]
  counts = jnp.maximum(one_hot.sum(axis=0), 1.0)[:, None]
  return l2_normalize(sums / counts)


def classify_by_prototypes(query_features: jax.Array, prototypes: jax.Array) -> jax.Array:
  """Cosine similarities `[..., n_way]` of query features `[..., C]` to prototypes `[n_way, C]`."""
  return l2_normalize(query_features) @ l2_normalize(prototypes).T


def dense_scores(query_maps: jax.Array, prototypes: jax.Array) -> jax.Array:
  """Per-position cosine scores averaged over positions: `[Q, h, w, C]` -> `[Q, n_way]`."""
  if query_maps.ndim != 4:
    raise ValueError(f'dense_scores: query maps must be [Q, h, w, C], got {query_maps.shape}.')
  return classify_by_prototypes(query_maps, prototypes).mean(axis=(1, 2))
