"""Randomness: every key is derived from the config seed, never stored.

Folding the step number into the seed means a resumed run draws exactly the
keys an uninterrupted run would have drawn at that step.
"""

import jax


def seed_key(seed: int) -> jax.Array:
  return jax.random.PRNGKey(seed)


def step_rng(seed: int, step, stream: int = 0) -> jax.Array:
  """Key for one step; `stream` separates independent uses within a step."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), stream)
  return jax.random.fold_in(key, step)
