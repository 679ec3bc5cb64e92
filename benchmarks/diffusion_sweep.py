"""Diffusion settings chosen on a trained few-shot workdir's validation classes, never on the
novel ones: transductive propagation paired with the prototypes on the same episodes, and
retrieval re-ranking against the Euclidean ranking.

`--task=transductive`: every combination of `--alphas`, `--ks` and `--class_mass`, for each mode
of `--modes`, on `--episodes` fixed episodes (seed `--seed`) per shot count of `--shots` (the
config's). `--task=retrieval`: every combination of `--ks`, `--query_ks`, `--alphas` and
`--mutual`, every validation image a query against the others.

  python benchmarks/diffusion_sweep.py --workdir=workdirs/omniglot_dc_val_greek \
      --data_dir=../shared/data/omniglot --episodes=2000
  python benchmarks/diffusion_sweep.py --workdir=workdirs/omniglot_dc_val_greek \
      --data_dir=../shared/data/omniglot --task=retrieval --alphas=0.9,0.99 --ks=5,10,20,50
"""

import argparse
import itertools
import json
import os
import sys

import ml_collections
import numpy as np

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fsl import fewshot_data  # noqa: E402  pylint: disable=wrong-import-position
from fsl import train as fsl_train  # noqa: E402  pylint: disable=wrong-import-position
from fsl import transductive  # noqa: E402  pylint: disable=wrong-import-position
from fsl.episodic_evaluation import (  # noqa: E402  pylint: disable=wrong-import-position
    embed_in_batches,
    episode_accuracies,
    paired_difference,
)
from groundwork import training  # noqa: E402  pylint: disable=wrong-import-position
from groundwork.data import make_episodes  # noqa: E402  pylint: disable=wrong-import-position
from groundwork.evaluation import retrieval  # noqa: E402  pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--task', default='transductive', choices=('transductive', 'retrieval'))
  parser.add_argument('--episodes', type=int, default=2000)
  parser.add_argument('--seed', type=int, default=1)
  parser.add_argument('--modes', default='pooled')
  parser.add_argument('--alphas', default='0.5,0.8,0.9,0.99')
  parser.add_argument('--ks', default='10,20')
  parser.add_argument('--class_mass', default='true,false')
  parser.add_argument('--shots', default='', help="Comma separated; '' = the config's.")
  parser.add_argument('--query_ks', default='1,3,5,10')
  parser.add_argument('--mutual', default='true,false')
  parser.add_argument('--out', default='')
  args = parser.parse_args()

  config = ml_collections.ConfigDict(training.read_json(os.path.join(args.workdir, 'config.json')))
  if args.data_dir:
    config.data_dir = args.data_dir
  data = fewshot_data.load(config)
  if data.val is None:
    raise ValueError(
        f'{args.workdir} has no validation classes: train it with '
        '--config.omniglot_val_alphabet=<a base alphabet> (or a dataset with a validation split).'
    )
  model = fsl_train.build_model(config, data.num_base_classes)
  tx, _ = training.make_optimizer(config.optim, 1)
  template = fsl_train.create_state(config, model, data.base.images.shape[1:], tx)
  state = training.Checkpointer(args.workdir, subdir='kept').restore(template)[0]
  embed = fsl_train.embed_fn(state, config)
  pooled = embed_in_batches(lambda b: embed(b)[0], data.val.images, config.eval.embed_batch)
  if args.task == 'retrieval':
    rows = retrieval_sweep(pooled, data.val.labels, args, seed=config.eval.seed)
  else:
    maps = embed_in_batches(lambda b: embed(b)[1], data.val.images, config.eval.embed_batch)
    rows = transductive_sweep(pooled, maps, data.val.labels, config, args)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(rows, f, indent=2)


def _flags(text: str) -> list[bool]:
  return [{'true': True, 'false': False}[value] for value in text.split(',')]


def retrieval_sweep(pooled, labels, args, seed: int) -> list[dict]:
  rows = []
  for k, query_k, alpha, mutual in itertools.product(
      [int(k) for k in args.ks.split(',')],
      [int(q) for q in args.query_ks.split(',')],
      [float(a) for a in args.alphas.split(',')],
      _flags(args.mutual),
  ):
    if query_k > k:
      continue
    report = retrieval.retrieval_report(
        pooled, labels, seed=seed, k=k, query_k=query_k, alpha=alpha, mutual=mutual
    )
    rows.append(dict(k=k, query_k=query_k, alpha=alpha, mutual=mutual, **report))
    print(
        f'k {k:<3} query_k {query_k:<3} alpha {alpha:<5} mutual {mutual!s:<5} MAP@R '
        f'{100 * report["euclidean_map_at_r"]:6.2f} -> {100 * report["diffusion_map_at_r"]:6.2f}'
        f', P@1 {100 * report["euclidean_precision_at_1"]:6.2f} -> '
        f'{100 * report["diffusion_precision_at_1"]:6.2f}',
        flush=True,
    )
  return rows


def transductive_sweep(pooled, maps, labels, config, args) -> list[dict]:
  rows = []
  shots = [int(k) for k in args.shots.split(',')] if args.shots else config.eval.shots
  for k_shot in shots:
    episodes = make_episodes(
        labels, config.eval.n_way, k_shot, config.eval.n_query, args.episodes, args.seed
    )
    common = dict(n_way=config.eval.n_way, batch_size=config.eval.batch_episodes)
    inductive = episode_accuracies(pooled, episodes, **common)
    for mode, alpha, k, class_mass in itertools.product(
        args.modes.split(','),
        [float(a) for a in args.alphas.split(',')],
        [int(k) for k in args.ks.split(',')],
        _flags(args.class_mass),
    ):
      settings = transductive.Propagation(k=k, alpha=alpha, class_mass=class_mass)
      other = episode_accuracies(
          pooled, episodes, maps=maps, transductive=mode, propagation=settings, **common
      )
      row = dict(shot=k_shot, mode=mode, alpha=alpha, k=k, class_mass=class_mass)
      row.update(paired_difference(inductive, other), inductive=float(np.mean(inductive)))
      rows.append(row)
      print(
          f'{k_shot}-shot {mode:<6} alpha {alpha:<5} k {k:<3} class mass {class_mass!s:<5} '
          f'{100 * row["accuracy"]:6.2f}  vs prototypes {100 * row["inductive"]:6.2f}: '
          f'{100 * row["difference"]:+6.2f} +- {100 * row["difference_ci95"]:.2f}',
          flush=True,
      )
  return rows


if __name__ == '__main__':
  main()
