"""N-way K-shot episodic evaluation on precomputed features, and Lake's one-shot runs.

The dataset is embedded once; each episode then only gathers rows, imprints
prototypes and scores its queries, so thousands of episodes run as a few
jitted, vmapped batches on device.

Per-episode accuracies are saved as `episode_accuracies.npz` in a workdir
(`save_episode_accuracies`): one float32 array `[E]` per setting (e.g.
'5way_1shot'), plus the array 'episode_lists', a 0-d string holding JSON
`{setting: identity}` where identity is `groundwork.data.episodes.episode_list_id`
of the episodes the setting was scored on. `np.load(path)['5way_1shot']` still
reads a setting directly; `benchmarks/paired_comparison.py` pairs two files only
where the identities agree.
"""

import functools
import json
import os
from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsl.prototypes import classify_by_prototypes, dense_scores, imprint_prototypes
from groundwork.evaluation import map_in_batches, mean_ci95

SCORINGS = ('pooled', 'dense')
EPISODE_ACCURACIES_FILE = 'episode_accuracies.npz'
# The npz entry holding the identities; settings are named like '5way_1shot', never this.
EPISODE_LISTS_KEY = 'episode_lists'
Progress = Callable[[int, int], None]
# Batched episode function: (support_idx, query_idx, support_labels, query_labels,
# episode_ids), each with a leading batch axis -> per-episode accuracies [batch].
EpisodeBatchFn = Callable[..., jax.Array]


class EpisodesLike(Protocol):
  """What `groundwork.data.make_episodes` returns: int32 arrays with a leading episode axis."""

  support_idx: np.ndarray  # [E, n_way * k_shot] dataset indices, class-major
  query_idx: np.ndarray  # [E, n_way * n_query]
  support_labels: np.ndarray  # [E, n_way * k_shot] episode labels 0..n_way-1
  query_labels: np.ndarray  # [E, n_way * n_query]


class LakeRunLike(Protocol):
  """One of Lake's 20-way one-shot runs (`groundwork.data.LakeRun`)."""

  train_images: np.ndarray  # [20, H, W, C], one image per class
  test_images: np.ndarray  # [20, H, W, C]
  test_targets: np.ndarray  # [20] index of the true training image


def print_progress(done: int, total: int) -> None:
  """Default progress report: one line per batch of episodes."""
  print(f'  episodes {done}/{total}', flush=True)


def episode_n_way(episodes: EpisodesLike) -> int:
  """Number of classes per episode, read from the support labels."""
  return int(np.max(episodes.support_labels)) + 1


def run_episode_batches(
    batch_fn: EpisodeBatchFn,
    episodes: EpisodesLike,
    batch_size: int,
    progress: Progress | None = None,
) -> np.ndarray:
  """Applies `batch_fn` to consecutive batches of episodes; returns accuracies `[E]`.

  The last batch is padded with repeats of its first episode (results dropped),
  so every call has the same shapes and `batch_fn` compiles once.
  """
  arrays = [
      np.asarray(a, np.int32)
      for a in (
          episodes.support_idx,
          episodes.query_idx,
          episodes.support_labels,
          episodes.query_labels,
      )
  ]
  total = arrays[0].shape[0]
  if total == 0:
    raise ValueError('No episodes to evaluate: num_episodes must be at least 1.')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be at least 1.')
  return map_in_batches(
      lambda ids: batch_fn(*(a[ids] for a in arrays), ids),
      np.arange(total, dtype=np.int32),
      batch_size,
      progress,
  )


def _check_indices(episodes: EpisodesLike, num_items: int, n_way: int) -> None:
  for name in ('support_idx', 'query_idx'):
    idx = np.asarray(getattr(episodes, name))
    if idx.size and (idx.min() < 0 or idx.max() >= num_items):
      raise ValueError(
          f'episodes.{name} holds indices in [{idx.min()}, {idx.max()}] but the '
          f'features have {num_items} rows: build the episodes from the same dataset.'
      )
  for name in ('support_labels', 'query_labels'):
    labels = np.asarray(getattr(episodes, name))
    if labels.min() < 0 or labels.max() >= n_way:
      raise ValueError(
          f'episodes.{name} must lie in 0..{n_way - 1} (n_way={n_way}), '
          f'got [{labels.min()}, {labels.max()}].'
      )


def episode_accuracies(
    features: jax.Array,
    episodes: EpisodesLike,
    *,
    maps: jax.Array | None = None,
    scoring: str = 'pooled',
    n_way: int | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> np.ndarray:
  """Query accuracy of every episode with imprinted-prototype classification.

  Args:
    features: pooled features `[N, C]` of the whole dataset.
    episodes: index/label arrays (see `EpisodesLike`).
    maps: feature maps `[N, h, w, C]`, needed only for `scoring='dense'`.
    scoring: 'pooled' (the paper's rule: cosine of pooled query to prototypes) or
      'dense' (cosine of every query position, averaged). Prototypes always come
      from pooled support features.
    n_way: classes per episode; read from the labels when None.
    batch_size: episodes per jitted call.
    progress: called with (episodes done, total) after each batch.

  Returns:
    float32 accuracies `[E]`, fractions in [0, 1].
  """
  if scoring not in SCORINGS:
    raise ValueError(f'scoring={scoring!r} is not one of {list(SCORINGS)}.')
  if scoring == 'dense' and maps is None:
    raise ValueError("scoring='dense' needs the feature maps: pass maps=[N, h, w, C].")
  n_way = episode_n_way(episodes) if n_way is None else n_way
  _check_indices(episodes, features.shape[0], n_way)
  features = jnp.asarray(features)
  maps = jnp.asarray(maps) if scoring == 'dense' else None
  # The dataset arrays are arguments, not closed-over constants, so XLA never embeds them.
  return run_episode_batches(
      lambda s, q, sl, ql, _: _episode_batch(
          features, maps, s, q, sl, ql, n_way=n_way, scoring=scoring
      ),
      episodes,
      batch_size,
      progress,
  )


# One jitted function for every call (jit caches per shape and n_way/scoring), so
# evaluating several checkpoints or shot counts compiles once, not once per call.
@functools.partial(jax.jit, static_argnames=('n_way', 'scoring'))
def _episode_batch(features, maps, s_idx, q_idx, s_lab, q_lab, *, n_way: int, scoring: str):
  one = functools.partial(_episode_accuracy, n_way=n_way, scoring=scoring)
  return jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0))(features, maps, s_idx, q_idx, s_lab, q_lab)


def _episode_accuracy(features, maps, s_idx, q_idx, s_lab, q_lab, *, n_way: int, scoring: str):
  prototypes = imprint_prototypes(features[s_idx], s_lab, n_way)
  if scoring == 'dense':
    scores = dense_scores(maps[q_idx], prototypes)
  else:
    scores = classify_by_prototypes(features[q_idx], prototypes)
  return jnp.mean(jnp.argmax(scores, axis=-1) == q_lab)


def summarize(accuracies: np.ndarray) -> dict:
  """`{"accuracy", "ci95", "episodes"}` as written to results.json (fractions)."""
  mean, ci95 = mean_ci95(accuracies)
  return {'accuracy': float(mean), 'ci95': float(ci95), 'episodes': int(len(accuracies))}


def save_episode_accuracies(path: str, settings: dict[str, tuple[np.ndarray, dict]]) -> None:
  """Writes `{setting: (accuracies [E], episode-list identity)}` to the npz at `path`.

  The identity (`groundwork.data.episodes.episode_list_id`) says which episodes the
  accuracies belong to, so a later paired comparison can check it pairs the same tasks.
  Written atomically: a killed evaluation never leaves a half file to be paired.
  """
  arrays, identities = {}, {}
  for name, (accuracies, identity) in settings.items():
    if name == EPISODE_LISTS_KEY:
      raise ValueError(f'{EPISODE_LISTS_KEY!r} is reserved for the identities; rename the setting.')
    accuracies = np.asarray(accuracies, np.float32)
    if accuracies.shape != (identity['episodes'],):
      raise ValueError(
          f'{name}: accuracies of shape {accuracies.shape} but the episode list holds '
          f'{identity["episodes"]} episodes.'
      )
    arrays[name], identities[name] = accuracies, dict(identity)
  arrays[EPISODE_LISTS_KEY] = np.asarray(json.dumps(identities, sort_keys=True))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:  # A file object: np.savez would append '.npz' to a name.
    np.savez(f, **arrays)
  os.replace(tmp, path)


def load_episode_accuracies(path: str) -> dict[str, tuple[np.ndarray, dict | None]]:
  """`{setting: (accuracies, identity)}` from `save_episode_accuracies`' file.

  Files written before identities were stored give `identity=None` for every setting:
  the caller decides whether unidentified episode lists are good enough.
  """
  with np.load(path, allow_pickle=False) as f:
    identities = json.loads(str(f[EPISODE_LISTS_KEY])) if EPISODE_LISTS_KEY in f.files else {}
    return {name: (f[name], identities.get(name)) for name in f.files if name != EPISODE_LISTS_KEY}


def embed_in_batches(
    embed_fn: Callable[[np.ndarray], jax.Array], images: np.ndarray, batch_size: int
) -> np.ndarray:
  """`embed_fn` over `images` in fixed-size batches (last one padded); concatenated output.

  `embed_fn` maps a batch `[b, ...]` to an array `[b, ...]` (e.g. pooled features).
  """
  if len(images) == 0:
    raise ValueError('embed_in_batches: no images to embed.')
  return map_in_batches(embed_fn, images, batch_size)


def lake_oneshot_error(
    embed_fn: Callable[[np.ndarray], jax.Array], runs: Sequence[LakeRunLike]
) -> dict:
  """Lake et al.'s 20-way one-shot protocol: `{"error": wrong/items, "items": items}`.

  In each run every test image goes to the most cosine-similar of the 20 training
  images (one per class; a 1-shot prototype is the feature's direction), and is
  wrong when that is not `test_targets`. `embed_fn` maps images `[b, H, W, C]`
  to pooled features `[b, C]`.
  """
  if not runs:
    raise ValueError(
        'lake_oneshot_error: no runs given; load them with '
        'groundwork.data.load_lake_runs(data_dir).'
    )
  wrong, items = 0, 0
  for run in runs:
    n_train = len(run.train_images)
    train = jnp.asarray(embed_fn(np.asarray(run.train_images)))
    test = jnp.asarray(embed_fn(np.asarray(run.test_images)))
    prototypes = imprint_prototypes(train, jnp.arange(n_train), n_train)
    predicted = np.asarray(jnp.argmax(classify_by_prototypes(test, prototypes), axis=-1))
    wrong += int(np.sum(predicted != np.asarray(run.test_targets)))
    items += len(run.test_targets)
  return {'error': wrong / items, 'items': items}
