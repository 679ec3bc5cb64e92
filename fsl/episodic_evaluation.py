"""N-way K-shot episodic evaluation on precomputed features, and Lake's one-shot runs.

The dataset is embedded once; each episode then only gathers rows, imprints
prototypes and scores its queries, so thousands of episodes run as a few
jitted, vmapped batches on device. Transductively (`transductive='pooled'` or 'dense',
fsl.transductive), each episode instead propagates its support labels over the kNN graph of
its support and queries; `paired_difference` compares two rules on the same episodes.

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
from typing import Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from fsl import transductive as transduction
from fsl.prototypes import classify_by_prototypes, dense_scores, imprint_prototypes
from groundwork.evaluation import map_in_batches, mean_ci95, retrieval

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
    transductive: str = 'none',
    propagation: transduction.Propagation = transduction.Propagation(),
    n_way: int | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> np.ndarray:
  """Query accuracy of every episode, by imprinted prototypes or by propagation.

  Args:
    features: pooled features `[N, C]` of the whole dataset.
    episodes: index/label arrays (see `EpisodesLike`).
    maps: feature maps `[N, h, w, C]`, needed only for `scoring='dense'` or
      `transductive='dense'`.
    scoring: the inductive rule: 'pooled' (the paper's: cosine of pooled query to
      prototypes) or 'dense' (cosine of every query position, averaged). Prototypes always
      come from pooled support features.
    transductive: 'none' (the inductive rule), or label propagation over the episode's
      'pooled' features or 'dense' positions (fsl.transductive), which replaces `scoring`.
    propagation: the propagation's settings.
    n_way: classes per episode; read from the labels when None.
    batch_size: episodes per jitted call; divided by the h * w positions for
      `transductive='dense'`, whose episode graphs have that many times more nodes.
    progress: called with (episodes done, total) after each batch.

  Returns:
    float32 accuracies `[E]`, fractions in [0, 1].
  """
  if scoring not in SCORINGS:
    raise ValueError(f'scoring={scoring!r} is not one of {list(SCORINGS)}.')
  if transductive not in transduction.MODES:
    raise ValueError(f'transductive={transductive!r} is not one of {list(transduction.MODES)}.')
  needs_maps = 'dense' in (scoring, transductive)
  if needs_maps and maps is None:
    raise ValueError(
        "scoring or transductive 'dense' needs the feature maps: pass maps=[N, h, w, C]."
    )
  n_way = episode_n_way(episodes) if n_way is None else n_way
  _check_indices(episodes, features.shape[0], n_way)
  features = jnp.asarray(features)
  maps = jnp.asarray(maps) if needs_maps else None
  if transductive == 'dense':
    batch_size = max(1, batch_size // (maps.shape[1] * maps.shape[2]))
  rule = dict(n_way=n_way, scoring=scoring, transductive=transductive, propagation=propagation)
  # The dataset arrays are arguments, not closed-over constants, so XLA never embeds them.
  return run_episode_batches(
      lambda s, q, sl, ql, _: _episode_batch(features, maps, s, q, sl, ql, **rule),
      episodes,
      batch_size,
      progress,
  )


# One jitted function for every call (jit caches per shape and rule), so evaluating several
# checkpoints or shot counts compiles once, not once per call.
@functools.partial(jax.jit, static_argnames=('n_way', 'scoring', 'transductive', 'propagation'))
def _episode_batch(features, maps, s_idx, q_idx, s_lab, q_lab, **rule):
  one = functools.partial(_episode_accuracy, **rule)
  return jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0))(features, maps, s_idx, q_idx, s_lab, q_lab)


def _episode_accuracy(
    features, maps, s_idx, q_idx, s_lab, q_lab, *, n_way, scoring, transductive, propagation
):
  if transductive != 'none':
    nodes = (
        features[:, None]
        if transductive == 'pooled'
        else maps.reshape(maps.shape[0], -1, maps.shape[-1])
    )
    scores = transduction.propagation_scores(nodes[s_idx], nodes[q_idx], s_lab, n_way, propagation)
    return jnp.mean(jnp.argmax(scores, axis=-1) == q_lab)
  prototypes = imprint_prototypes(features[s_idx], s_lab, n_way)
  if scoring == 'dense':
    scores = dense_scores(maps[q_idx], prototypes)
  else:
    scores = classify_by_prototypes(features[q_idx], prototypes)
  return jnp.mean(jnp.argmax(scores, axis=-1) == q_lab)


def paired_difference(baseline: np.ndarray, other: np.ndarray) -> dict:
  """`other`'s summary plus its paired difference from `baseline` on the same episodes:
  `{"accuracy", "ci95", "episodes", "difference", "difference_ci95"}` (fractions; the 95%
  interval of the mean per-episode difference)."""
  baseline, other = np.asarray(baseline), np.asarray(other)
  if baseline.shape != other.shape:
    raise ValueError(
        f'paired_difference needs accuracies of the same episodes; got {baseline.shape} and '
        f'{other.shape}.'
    )
  difference, ci95 = mean_ci95(other.astype(np.float64) - baseline)
  return {**summarize(other), 'difference': difference, 'difference_ci95': ci95}


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
    embed_fn: Callable[[np.ndarray], jax.Array],
    runs: Sequence[LakeRunLike],
    *,
    transductive: str = 'none',
    propagation: transduction.Propagation = transduction.Propagation(),
    assignment: bool = False,
) -> dict:
  """Lake et al.'s 20-way one-shot protocol: `{"error": wrong/items, "items": items, "rule"}`.

  In each run every test image goes to the most cosine-similar of the 20 training images
  (one per class; a 1-shot prototype is the feature's direction), or, with `transductive`,
  to the class its node receives most of when the 20 labels are propagated over the 40
  images ('pooled') or their positions ('dense'); it is wrong when that is not
  `test_targets`. `assignment`: instead give each run's 20 test images one class each, the
  one-to-one assignment of largest total score (scipy's `linear_sum_assignment`); it
  exploits how the runs are built (each class is tested exactly once), so it is never a
  default and `rule` names it.

  `embed_fn` maps images `[b, H, W, C]` to pooled features `[b, C]` or feature maps
  `[b, h, w, C]` (whose mean over positions is the pooled feature); 'dense' needs maps.
  """
  if not runs:
    raise ValueError(
        'lake_oneshot_error: no runs given; load them with '
        'groundwork.data.load_lake_runs(data_dir).'
    )
  if transductive not in transduction.MODES:
    raise ValueError(f'transductive={transductive!r} is not one of {list(transduction.MODES)}.')
  wrong, items = 0, 0
  for run in runs:
    n_train = len(run.train_images)
    train = jnp.asarray(embed_fn(np.asarray(run.train_images)))
    test = jnp.asarray(embed_fn(np.asarray(run.test_images)))
    if transductive == 'dense' and train.ndim != 4:
      raise ValueError("transductive='dense' needs embed_fn to return feature maps [b, h, w, C].")
    if transductive == 'none':
      pooled = lambda f: f.mean(axis=(1, 2)) if f.ndim == 4 else f
      prototypes = imprint_prototypes(pooled(train), jnp.arange(n_train), n_train)
      scores = classify_by_prototypes(pooled(test), prototypes)
    else:
      nodes = lambda f: (f.mean(axis=(1, 2)) if f.ndim == 4 else f)[:, None]
      if transductive == 'dense':
        nodes = lambda f: f.reshape(f.shape[0], -1, f.shape[-1])
      scores = _lake_scores(nodes(train), nodes(test), n_way=n_train, propagation=propagation)
    scores = np.asarray(scores)
    if assignment:
      test_rows, classes = scipy.optimize.linear_sum_assignment(scores, maximize=True)
      predicted = classes[np.argsort(test_rows)]
    else:
      predicted = scores.argmax(axis=-1)
    wrong += int(np.sum(predicted != np.asarray(run.test_targets)))
    items += len(run.test_targets)
  return {'error': wrong / items, 'items': items, 'rule': lake_rule(transductive, assignment)}


def lake_rule(transductive: str, assignment: bool) -> str:
  """The name of a Lake scoring rule, as results and tables print it."""
  rule = 'prototypes' if transductive == 'none' else f'propagation over {transductive} features'
  return rule + (' + one-to-one assignment' if assignment else '')


@functools.partial(jax.jit, static_argnames=('n_way', 'propagation'))
def _lake_scores(train, test, *, n_way, propagation):
  return transduction.propagation_scores(train, test, jnp.arange(n_way), n_way, propagation)


# ----------------------------------------------------------------------------
# The config's inference rules, as the trainers use them.
# ----------------------------------------------------------------------------
class InferenceRules(NamedTuple):
  """What `config.eval` asks beyond the inductive prototypes."""

  transductive: str  # fsl.transductive.MODES.
  propagation: transduction.Propagation
  lake_assignment: bool
  retrieval: dict | None  # `retrieval_report`'s settings; None: no retrieval metrics.


def inference_rules(eval_config) -> InferenceRules:
  """`config.eval`'s rules; fields absent from a workdir's older config take their defaults
  (none of them on)."""
  propagation = eval_config.get('propagation')
  retrieval = eval_config.get('retrieval')
  return InferenceRules(
      transductive=eval_config.get('transductive', 'none'),
      propagation=transduction.Propagation(
          **({} if propagation is None else propagation.to_dict())
      ),
      lake_assignment=eval_config.get('lake_assignment', False),
      retrieval=(
          None
          if retrieval is None or not retrieval.enabled
          else {k: v for k, v in retrieval.to_dict().items() if k != 'enabled'}
      ),
  )


def check_inference_rules(eval_config) -> None:
  """A ValueError naming the `config.eval` field of a rule out of range (before training)."""
  rules = inference_rules(eval_config)
  # Graphs of images are the smallest ('dense' multiplies them by the positions).
  smallest = eval_config.n_way * (min(eval_config.shots) + eval_config.n_query)
  if eval_config.get('lake'):
    smallest = min(smallest, 40)  # A Lake run: 20 training and 20 test images.
  transduction.check_settings(rules.transductive, rules.propagation, smallest)
  if rules.retrieval is not None:
    checked = ('k', 'query_k', 'gamma', 'alpha', 'cg_iterations')
    retrieval.check_settings(
        config_path='config.eval.retrieval', **{k: rules.retrieval[k] for k in checked}
    )


def lake_results(pooled_fn, maps_fn, runs: Sequence[LakeRunLike], rules: InferenceRules) -> dict:
  """Lake's error by every rule asked for, under results.json keys that name the rule:
  'lake_oneshot' (prototypes), then '_transductive_{mode}' and '_assignment' variants.
  `pooled_fn`, `maps_fn`: images -> pooled features, feature maps."""
  modes = ('none',) + (() if rules.transductive == 'none' else (rules.transductive,))
  results = {}
  for mode in modes:
    for assignment in (False, True) if rules.lake_assignment else (False,):
      key = 'lake_oneshot' + ('' if mode == 'none' else f'_transductive_{mode}')
      results[key + ('_assignment' if assignment else '')] = lake_oneshot_error(
          maps_fn if mode == 'dense' else pooled_fn,
          runs,
          transductive=mode,
          propagation=rules.propagation,
          assignment=assignment,
      )
  return results


def inference_scalars(results: dict) -> dict:
  """TensorBoard scalars of the transductive, Lake-variant and retrieval entries of
  `results` (those `result_scalars` does not plot)."""
  scalars = {}
  for name, summary in results['fewshot'].items():
    for rule, entry in summary.items():
      if rule.startswith('transductive_'):
        scalars[f'{name}_{rule}_accuracy'] = entry['accuracy']
        scalars[f'{name}_{rule}_difference'] = entry['difference']
  for key, entry in results.items():
    if key.startswith('lake_oneshot_'):
      scalars[f'{key}_error'] = entry['error']
  for metric, value in results.get('retrieval', {}).items():
    scalars[f'retrieval_{metric}'] = value
  return scalars


def print_inference(results: dict) -> None:
  """The transductive rows (paired differences), Lake's other rules, the retrieval table."""
  for name, summary in results['fewshot'].items():
    for rule, entry in summary.items():
      if rule.startswith('transductive_'):
        print(
            f'{name} {rule}: {100 * entry["accuracy"]:.2f} +- {100 * entry["ci95"]:.2f}, '
            f'paired difference from prototypes {100 * entry["difference"]:+.2f} +- '
            f'{100 * entry["difference_ci95"]:.2f} points ({entry["episodes"]} episodes)'
        )
  for key, entry in results.items():
    if key.startswith('lake_oneshot_'):
      print(f'Lake 20-way one-shot error, {entry["rule"]}: {100 * entry["error"]:.2f}%')
  if 'retrieval' in results:
    retrieval.print_report(results['retrieval'])


def result_scalars(results: dict) -> dict:
  """What TensorBoard plots of `results`: each setting's accuracy and 95% CI, Lake's error."""
  scalars = {}
  for name, r in results['fewshot'].items():
    scalars[f'{name}_accuracy'], scalars[f'{name}_ci95'] = r['accuracy'], r['ci95']
  if 'lake_oneshot' in results:
    scalars['lake_oneshot_error'] = results['lake_oneshot']['error']
  return {**scalars, **inference_scalars(results)}


def print_results(results: dict) -> None:
  """The evaluation table of `results` (every setting, Lake, the transductive rules)."""
  print(f'{"setting":<16}{"accuracy %":>12}{"95% CI":>10}{"episodes":>10}')
  for name, r in results['fewshot'].items():
    print(f'{name:<16}{100 * r["accuracy"]:>12.2f}{100 * r["ci95"]:>10.2f}{r["episodes"]:>10}')
  if 'lake_oneshot' in results:
    lake = results['lake_oneshot']
    print(f'Lake 20-way one-shot error: {100 * lake["error"]:.2f}% over {lake["items"]} items')
  print_inference(results)
