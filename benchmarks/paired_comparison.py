"""Paired difference of two few-shot workdirs evaluated on the same episode list.

  python benchmarks/paired_comparison.py workdirs/omniglot_conv4_dc workdirs/omniglot_conv4_gap

Both workdirs must have been evaluated with the same eval.seed, n_way and
episode count (the default), so episode i is the same task for both; the
difference of their accuracies is then averaged per episode, with its 95% CI.
"""

import os
import sys

import numpy as np

from groundwork.evaluation import mean_ci95


def main(a: str, b: str) -> None:
  acc_a = np.load(os.path.join(a, 'episode_accuracies.npz'))
  acc_b = np.load(os.path.join(b, 'episode_accuracies.npz'))
  print(f'{"setting":<14}{"A %":>9}{"B %":>9}{"A - B (paired) %":>22}  episodes')
  for name in sorted(set(acc_a.files) & set(acc_b.files)):
    x, y = acc_a[name], acc_b[name]
    if x.shape != y.shape:
      raise ValueError(f'{name}: {len(x)} vs {len(y)} episodes; evaluate both on the same list.')
    diff, ci = mean_ci95(x - y)
    print(
        f'{name:<14}{100 * x.mean():>9.2f}{100 * y.mean():>9.2f}'
        f'{100 * diff:>+14.2f} ± {100 * ci:.2f}  {len(x)}'
    )


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(__doc__)
  main(sys.argv[1], sys.argv[2])
