"""Base, validation and novel class splits of each few-shot benchmark.

Base classes train the network with ordinary mini-batches; validation classes
choose the kept checkpoint; novel classes are only ever seen in test episodes.
"""

import dataclasses

import ml_collections
import numpy as np

from groundwork import data as gdata

DATASETS = ('omniglot', 'miniimagenet', 'cifar_fs', 'fc100')

# The small background sets share Greek and Latin; the novel alphabets are the
# three found only in images_background_small2, so no novel character was seen
# in base training.
OMNIGLOT_BASE_ARCHIVE = 'images_background_small1.zip'
OMNIGLOT_NOVEL_ARCHIVE = 'images_background_small2.zip'


@dataclasses.dataclass
class FewShotData:
  base: gdata.ImageDataset
  val: gdata.ImageDataset | None
  novel: gdata.ImageDataset
  novel_name: str
  lake_runs: list | None = None

  @property
  def num_base_classes(self) -> int:
    return self.base.num_classes


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f'config.dataset={name!r} is not one of {list(DATASETS)}.')


def _omniglot(config: ml_collections.ConfigDict) -> FewShotData:
  size = config.image_size
  base = gdata.load_omniglot(config.data_dir, (OMNIGLOT_BASE_ARCHIVE,), image_size=size)
  both = gdata.load_omniglot(config.data_dir, (OMNIGLOT_NOVEL_ARCHIVE,), image_size=size)
  base_alphabets = {gdata.omniglot_alphabet_of(c) for c in base.class_names}
  novel = both.select_classes(
      [c for c in both.class_names if gdata.omniglot_alphabet_of(c) not in base_alphabets]
  )
  val = None
  if config.omniglot_val_alphabet:
    if config.omniglot_val_alphabet not in base_alphabets:
      raise ValueError(
          f'config.omniglot_val_alphabet={config.omniglot_val_alphabet!r} is not '
          f'a base alphabet; choose one of {sorted(base_alphabets)} or "".'
      )
    in_val = [
        c for c in base.class_names if gdata.omniglot_alphabet_of(c) == config.omniglot_val_alphabet
    ]
    val = base.select_classes(in_val)
    base = base.select_classes([c for c in base.class_names if c not in set(in_val)])
  lake = gdata.load_lake_runs(config.data_dir, image_size=size) if config.eval.lake else None
  alphabets = sorted({gdata.omniglot_alphabet_of(c) for c in novel.class_names})
  return FewShotData(base, val, novel, f'{novel.num_classes} characters of {alphabets}', lake)


def _miniimagenet(config) -> FewShotData:
  return FewShotData(
      base=gdata.load_miniimagenet(config.data_dir, 'train'),
      val=gdata.load_miniimagenet(config.data_dir, 'val'),
      novel=gdata.load_miniimagenet(config.data_dir, 'test'),
      novel_name='the 20 miniImageNet test classes',
  )


def _cifar_fewshot(config) -> FewShotData:
  splits = gdata.load_cifar_fewshot(config.data_dir, config.dataset)
  return FewShotData(
      base=splits['train'],
      val=splits['val'],
      novel=splits['test'],
      novel_name=f'the {config.dataset} test classes',
  )


def load(config: ml_collections.ConfigDict) -> FewShotData:
  """The splits of `config.dataset`, read from `config.data_dir`."""
  check_dataset_name(config.dataset)
  if config.dataset == 'omniglot':
    splits = _omniglot(config)
  elif config.dataset == 'miniimagenet':
    splits = _miniimagenet(config)
  else:
    splits = _cifar_fewshot(config)
  if config.get('max_base_images_per_class'):
    splits.base = _first_per_class(splits.base, config.max_base_images_per_class)
  return splits


def check_episodes_fit(
    split: gdata.ImageDataset,
    split_name: str,
    n_way: int,
    shots,
    n_query: int,
    shot_field: str = 'eval.shots',
) -> None:
  """Whether `split` holds `n_way`-way episodes of each of `shots` plus `n_query` queries.

  Checked right after the data is read, before the first training step, so an impossible
  evaluation stops the run before training, not after it.
  """
  classes, counts = np.unique(split.labels, return_counts=True)
  if n_way > len(classes):
    raise ValueError(
        f'config.eval.n_way={n_way} exceeds the {len(classes)} classes of the {split_name} '
        f'split; allowed: 1..{len(classes)}.'
    )
  needed = max(shots) + n_query
  if needed > counts.min():
    smallest = split.class_names[classes[np.argmin(counts)]]
    raise ValueError(
        f'config.{shot_field}={tuple(shots)} and config.eval.n_query={n_query} need '
        f'{max(shots)} + {n_query} = {needed} images per class, but class {smallest!r} of the '
        f'{split_name} split has {counts.min()}; allowed: {shot_field} + eval.n_query <= '
        f'{counts.min()}.'
    )


def check_evaluation(config: ml_collections.ConfigDict, data: FewShotData) -> None:
  """The episodes of base training's config fit its splits: `config.eval` on the novel
  classes and `config.validation` on the validation classes."""
  novel = config.eval
  check_episodes_fit(data.novel, 'novel', novel.n_way, novel.shots, novel.n_query)
  if data.val is not None:
    check_episodes_fit(
        data.val,
        'validation',
        novel.n_way,
        (config.validation.shot,),
        novel.n_query,
        shot_field='validation.shot',
    )


def _first_per_class(dataset: gdata.ImageDataset, count: int) -> gdata.ImageDataset:
  """Smoke runs: the first `count` images of every class."""
  keep = np.concatenate(
      [np.flatnonzero(dataset.labels == c)[:count] for c in range(dataset.num_classes)]
  )
  return dataset.subset(np.sort(keep))
