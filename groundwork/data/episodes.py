"""N-way K-shot Q-query episodes drawn from a seed.

The same seed gives the same episodes, so one fixed evaluation list (e.g.
10,000 episodes) is built once and every method is scored on it: the
comparisons between methods are paired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Episodes:
  """E episodes as indices into a dataset, each class-major.

  Attributes:
    support_idx: int32 [E, n_way * k_shot]; class j of episode e holds
      support_idx[e, j*k_shot:(j+1)*k_shot].
    query_idx: int32 [E, n_way * n_query], likewise.
    support_labels: int32 [E, n_way * k_shot], episode labels 0..n_way-1.
    query_labels: int32 [E, n_way * n_query].
  """

  support_idx: np.ndarray
  query_idx: np.ndarray
  support_labels: np.ndarray
  query_labels: np.ndarray

  def __len__(self) -> int:
    return len(self.support_idx)

  def __getitem__(self, index) -> Episodes:
    """Episodes `index` (a slice or index array), e.g. episodes[:100]."""
    return Episodes(*(np.asarray(a[index]) for a in dataclasses.astuple(self)))

  def save(self, path: str | os.PathLike) -> None:
    np.savez(path, **dataclasses.asdict(self))

  @classmethod
  def load(cls, path: str | os.PathLike) -> Episodes:
    with np.load(path) as f:
      return cls(**{field.name: f[field.name] for field in dataclasses.fields(cls)})


def make_episodes(
    labels: np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    num_episodes: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> Episodes:
  """Draws episodes of n_way distinct classes with disjoint support and query.

  Args:
    labels: int [N] dataset labels.
    n_way, k_shot, n_query: classes per episode, support and query images per class.
    num_episodes: how many episodes.
    seed: the same seed gives the same episodes.
    class_names: names used in error messages.

  Raises:
    ValueError: fewer than n_way classes, or a class with fewer than
      k_shot + n_query images (named in the message).
  """
  labels = np.asarray(labels)
  if min(n_way, k_shot, num_episodes) < 1 or n_query < 0:
    raise ValueError(
        f'Need n_way, k_shot, num_episodes >= 1 and n_query >= 0; got '
        f'{n_way}, {k_shot}, {num_episodes}, {n_query}.'
    )
  classes, counts = np.unique(labels, return_counts=True)
  if len(classes) < n_way:
    raise ValueError(f'{n_way}-way episodes need {n_way} classes; the data has {len(classes)}.')
  per_class = k_shot + n_query
  if counts.min() < per_class:
    small = classes[np.argmin(counts)]
    name = f'{class_names[small]!r} (label {small})' if class_names is not None else str(small)
    raise ValueError(
        f'Class {name} has {counts.min()} images but k_shot + n_query = '
        f'{k_shot} + {n_query} = {per_class} are needed per class.'
    )
  members = [np.flatnonzero(labels == c) for c in classes]
  rng = np.random.default_rng(seed)
  support = np.empty((num_episodes, n_way, k_shot), np.int32)
  query = np.empty((num_episodes, n_way, n_query), np.int32)
  for e in range(num_episodes):
    for j, c in enumerate(rng.choice(len(classes), n_way, replace=False)):
      picked = rng.choice(members[c], per_class, replace=False)
      support[e, j], query[e, j] = picked[:k_shot], picked[k_shot:]
  way = np.arange(n_way, dtype=np.int32)
  return Episodes(
      support_idx=support.reshape(num_episodes, -1),
      query_idx=query.reshape(num_episodes, -1),
      support_labels=np.broadcast_to(np.repeat(way, k_shot), (num_episodes, n_way * k_shot)).copy(),
      query_labels=np.broadcast_to(np.repeat(way, n_query), (num_episodes, n_way * n_query)).copy(),
  )


def episode_list_id(episodes: Episodes, seed: int) -> dict:
  """What identifies an episode list, so two per-episode result files can be paired.

  Returns `{'seed', 'n_way', 'k_shot', 'n_query', 'episodes', 'index_sha256'}`: the
  settings it was drawn with, plus a sha256 (hex) over the shapes and int32 bytes of
  support_idx, query_idx, support_labels and query_labels. The index arrays are
  class-major, so the hash also covers which image each class got and the class
  order; two lists with the same hash score the same tasks in the same order. The
  seed is recorded because `episodes` does not carry it (and it says why hashes differ).
  """
  support_labels = np.asarray(episodes.support_labels)
  num_episodes = len(support_labels)
  n_way = int(support_labels.max()) + 1 if support_labels.size else 0
  digest = hashlib.sha256()
  for a in (episodes.support_idx, episodes.query_idx, support_labels, episodes.query_labels):
    # Shapes first: [E, 5] and [E/5, 25] hold the same bytes but are different lists.
    # Little-endian whatever the machine, so a hash written on one host matches on another.
    a = np.ascontiguousarray(a, '<i4')
    digest.update(np.asarray(a.shape, '<i8').tobytes())
    digest.update(a.tobytes())
  return {
      'seed': int(seed),
      'n_way': n_way,
      'k_shot': np.shape(episodes.support_idx)[1] // max(n_way, 1),
      'n_query': np.shape(episodes.query_idx)[1] // max(n_way, 1),
      'episodes': num_episodes,
      'index_sha256': digest.hexdigest(),
  }


def episode_batches(
    images: np.ndarray,
    episodes: Episodes,
    batch_size: int,
    sharding: jax.sharding.Sharding | None = None,
) -> Iterator[dict]:
  """Consecutive groups of `batch_size` episodes as device arrays, ready for vmap.

  Yields dicts with 'support' [b, n_way*k_shot, H, W, C] and 'query' images
  (the dtype of `images`), 'support_labels' and 'query_labels'; the last
  group may be smaller.
  """
  for start in range(0, len(episodes), batch_size):
    part = episodes[start : start + batch_size]
    batch = {
        'support': images[part.support_idx],
        'query': images[part.query_idx],
        'support_labels': part.support_labels,
        'query_labels': part.query_labels,
    }
    yield jax.device_put(batch, sharding)
