"""Paired difference of two few-shot workdirs evaluated on the same episode list.

  python benchmarks/paired_comparison.py workdirs/omniglot_conv4_dc workdirs/omniglot_conv4_gap

Each workdir's episode_accuracies.npz (written by every evaluation) stores, per
setting, the accuracy of each episode and the identity of the episode list: seed,
n_way, k_shot, n_query, episode count and a hash of the image indices. Settings
present in both are paired only if the identities agree, so episode i is the same
task for both; the difference of their accuracies is then averaged per episode,
with its 95% CI. Different lists, or files written before identities were stored,
stop the comparison with a message naming what differs.
"""

import os
import sys

from fsl.episodic_evaluation import EPISODE_ACCURACIES_FILE, load_episode_accuracies
from groundwork.evaluation import mean_ci95

# The order of `episode_list_id`'s fields, the order in which differences are named.
FIELDS = ('seed', 'n_way', 'k_shot', 'n_query', 'episodes', 'index_sha256')


class EpisodeListMismatch(ValueError):
  """The two workdirs' per-episode accuracies are not on the same episode list."""


def _short(key: str, value) -> str:
  return f'{value[:8]}..' if key == 'index_sha256' else str(value)


def identity_differences(a: dict, b: dict) -> list[str]:
  """`['seed 0 vs 1', 'index hash 3fa2.. vs 91bc..']`: the fields where `a` and `b` differ."""
  differences = []
  for key in (*FIELDS, *sorted((set(a) | set(b)) - set(FIELDS))):
    if a.get(key) != b.get(key):
      label = 'index hash' if key == 'index_sha256' else key
      differences.append(f'{label} {_short(key, a.get(key))} vs {_short(key, b.get(key))}')
  return differences


def _load(workdir: str) -> dict:
  path = os.path.join(workdir, EPISODE_ACCURACIES_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} does not exist: evaluate the workdir first with '
        f'`python launch/evaluate.py --config=... --workdir={workdir}`.'
    )
  settings = load_episode_accuracies(path)
  unnamed = sorted(name for name, (_, identity) in settings.items() if identity is None)
  if unnamed:
    raise EpisodeListMismatch(
        f'{path} stores no episode-list identity for {", ".join(unnamed)} (written before '
        "identities were saved), so nothing shows its episodes are the other side's: "
        f're-evaluate it with `python launch/evaluate.py --config=... --workdir={workdir}`.'
    )
  return settings


def paired_differences(a: str, b: str) -> dict[str, tuple[float, float, float, float, int]]:
  """Per setting in both workdirs: (A - B mean, its 95% CI, A mean, B mean, episodes).

  Raises EpisodeListMismatch, before computing anything, when a setting's episode lists differ.
  """
  acc_a, acc_b = _load(a), _load(b)
  common = sorted(set(acc_a) & set(acc_b))
  if not common:
    raise EpisodeListMismatch(
        f'No setting in common: {a} has {sorted(acc_a)}, {b} has {sorted(acc_b)}.'
    )
  mismatched = []
  for name in common:
    differences = identity_differences(acc_a[name][1], acc_b[name][1])
    if differences:
      mismatched.append(f'{name}: {"; ".join(differences)}')
  if mismatched:
    raise EpisodeListMismatch(
        'The workdirs were evaluated on different episode lists, so their episodes cannot be '
        "paired; re-evaluate one with the other's eval settings.\n  " + '\n  '.join(mismatched)
    )
  pairs = {}
  for name in common:
    x, y = acc_a[name][0], acc_b[name][0]
    diff, ci = mean_ci95(x - y)
    pairs[name] = (diff, ci, float(x.mean()), float(y.mean()), len(x))
  return pairs


def main(a: str, b: str) -> None:
  pairs = paired_differences(a, b)
  print(f'{"setting":<14}{"A %":>9}{"B %":>9}{"A - B (paired) %":>22}  episodes')
  for name, (diff, ci, mean_a, mean_b, episodes) in pairs.items():
    print(
        f'{name:<14}{100 * mean_a:>9.2f}{100 * mean_b:>9.2f}'
        f'{100 * diff:>+14.2f} ± {100 * ci:.2f}  {episodes}'
    )


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(__doc__)
  try:
    main(sys.argv[1], sys.argv[2])
  except (EpisodeListMismatch, FileNotFoundError) as e:
    sys.exit(f'paired_comparison: {e}')
