r"""Few-shot base training with a GAP or dense-classification (DC) head.

Lifchitz, Avrithis, Picard, Bursuc, "Dense Classification and Implanting for
Few-Shot Learning", CVPR 2019. Base training on all base classes with ordinary
mini-batches and a cosine classifier; novel classes are classified by imprinted
prototypes in N-way K-shot episodes (mean and 95% CI over 10,000 episodes).

Omniglot (CPU, minutes; base = the 136 characters of images_background_small1,
novel = the 106 characters of the three alphabets only in images_background_small2,
plus Lake's 20 one-shot runs; the last checkpoint is kept, nothing is chosen on novel data):

  python launch/train.py \
    --config=configs/fsl/dense_classification.py:dataset=omniglot,encoder=conv4,head=dc \
    --config.data_dir=../shared/data/omniglot --workdir=workdirs/omniglot_conv4_dc

  and `head=gap` for the GAP baseline with the same recipe and seed;
  `--config.wide_control.width=16` for the DC+WIDE control of implanting. Measured
  (10,000 episodes, 5-way 1-shot / 5-shot accuracy %, Lake 20-way one-shot error):
    DC       90.64 ± 0.15 / 97.01 ± 0.06, Lake 26.00%   (3-5 min on 2 CPU cores)
    GAP      90.75 ± 0.15 / 97.12 ± 0.06, Lake 26.00%
    DC+WIDE  90.97 ± 0.14 / 97.06 ± 0.06, Lake 22.25%
  `quick` (8 epochs, 1,000 episodes; `make quickstart`), DC: 86.23 ± 0.55 / 94.66 ± 0.27,
  Lake 31.50% with the CPU kernels; 86.01 ± 0.55 / 94.47 ± 0.27, Lake 33.75% without.

miniImageNet (the paper's setting: ResNet-12 64-128-256-512, 84x84, 64 base classes,
16 validation classes choose the kept checkpoint by 5-way 1-shot accuracy, 20 test classes):

  python launch/train.py \
    --config=configs/fsl/dense_classification.py:dataset=miniimagenet,encoder=resnet12,head=dc \
    --config.data_dir=/path/to/miniimagenet --workdir=workdirs/mini_dc

  The paper reports, 5-way 1/5/10-shot: GAP 58.61/76.40/80.76, DC 62.53/78.95/82.66.
  This is a GPU run; its duration on one GPU has not been measured here (no GPU
  and no miniImageNet copy were available to this project's machines).

RFS base training (Tian et al. 2020, "Rethinking few-shot image classification"; their
code's recipe: ResNet-12 64-160-320-640, DropBlock as RFS / MetaOptNet, a linear classifier,
SGD 0.05, 100 epochs on miniImageNet, 90 on CIFAR-FS / FC100):

  python launch/train.py \
    --config=configs/fsl/dense_classification.py:dataset=miniimagenet,recipe=rfs \
    --config.data_dir=/path/to/miniimagenet --workdir=workdirs/mini_rfs

  and dataset=cifar_fs or fc100 with the CIFAR-100 python batches. RFS reports, 5-way
  1/5-shot (logistic regression on its features): miniImageNet 62.02/79.64, CIFAR-FS
  71.5/86.0, FC100 42.6/59.1. Not run here (a GPU run; no copy of these sets).

Args (after the colon, comma separated): dataset (omniglot, miniimagenet,
cifar_fs, fc100), recipe (lifchitz: the DC paper's; rfs: RFS's, not on omniglot),
encoder (conv4, resnet12, resnet12_wide, resnet18; default conv4, rfs resnet12_wide),
head (dc, gap, linear; default dc, rfs linear), smoke (tiny shapes and a few steps,
seconds on CPU), quick (a short Omniglot run for `make quickstart`: fewer epochs and
episodes).
"""

import dataclasses

import ml_collections

from groundwork.data.augment_spec import augment_spec_for
from groundwork.training.config_args import parse_args

DATASET_DEFAULTS = {
    'omniglot': dict(image_size=28, data_dir='data/omniglot'),
    'miniimagenet': dict(image_size=84, data_dir='data/miniimagenet'),
    'cifar_fs': dict(image_size=32, data_dir='data/cifar100'),
    'fc100': dict(image_size=32, data_dir='data/cifar100'),
}


def augment_fields(dataset: str) -> dict:
  """The data layer's training augmentation of `dataset`, as overridable fields."""
  spec = dataclasses.asdict(augment_spec_for(dataset, train=True))
  return {k: v for k, v in spec.items() if k not in ('mean', 'std')}


# RFS / MetaOptNet DropBlock: rate 0.1, block size 5 on 84x84 images (maps 10x10 and 5x5 in
# the last two blocks), 2 on 32x32 ones (4x4 and 2x2); keep rate ramped over 20 x 2000
# forward passes; dropout at the same rate in the first two blocks.
RFS_DROPBLOCK_SIZE = {'miniimagenet': 5, 'cifar_fs': 2, 'fc100': 2}
RFS_DROP_RATE = 0.1
RFS_DROPBLOCK_WARMUP_STEPS = 20 * 2000
# RFS's training lengths and learning-rate decays: its train_supervised.py defaults on
# miniImageNet; its authors' settings for CIFAR-FS and FC100 (WangYueFt/rfs issue 5).
RFS_EPOCHS = {'miniimagenet': 100, 'cifar_fs': 90, 'fc100': 90}
RFS_DECAY_EPOCHS = {'miniimagenet': (60, 80), 'cifar_fs': (45, 60, 75), 'fc100': (45, 60, 75)}
# RFS's ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4), on every dataset.
RFS_COLOR_JITTER = 0.4
RECIPE_DEFAULTS = {
    'lifchitz': dict(encoder='conv4', head='dc'),
    'rfs': dict(encoder='resnet12_wide', head='linear'),
}
ENCODERS = ('conv4', 'resnet12', 'resnet12_wide', 'resnet18')
HEADS = ('dc', 'gap', 'linear')


def encoder_kwargs(encoder: str, dataset: str, smoke: bool) -> dict:
  if encoder == 'conv4':
    # On 28x28 characters four pooled blocks leave a 1x1 map, where dense
    # classification is GAP; pooling in the first two blocks only keeps 7x7.
    pool_blocks = 2 if dataset == 'omniglot' else 4
    return dict(width=8 if smoke else 64, pool_blocks=pool_blocks)
  return dict(widths=(4, 8, 8, 16)) if smoke else {}


def resolve_recipe(args: dict) -> dict:
  """`args` with the recipe's encoder and head where none was given; checks the choices."""
  recipe, dataset = args['recipe'], args['dataset']
  args = dict(args)
  for name, allowed in (('encoder', ENCODERS), ('head', HEADS)):
    args[name] = args[name] or RECIPE_DEFAULTS[recipe][name]
    if args[name] not in allowed:
      raise ValueError(f'config arg {name}={args[name]!r} is not one of {list(allowed)}.')
  if recipe == 'rfs':
    if dataset not in RFS_DROPBLOCK_SIZE:
      raise ValueError(
          f'config arg recipe=rfs has no setting for dataset={dataset!r}; '
          f'choose one of {sorted(RFS_DROPBLOCK_SIZE)}.'
      )
    if args['encoder'] not in ('resnet12', 'resnet12_wide'):
      raise ValueError(
          f'config arg recipe=rfs regularises a ResNet-12 (DropBlock); encoder='
          f"{args['encoder']!r} has none: choose resnet12_wide (RFS's) or resnet12."
      )
  return args


def rfs_encoder_kwargs(dataset: str, smoke: bool) -> dict:
  """RFS / MetaOptNet's DropBlock and dropout for `dataset`."""
  return dict(
      dropblock=True,
      drop_rate=RFS_DROP_RATE,
      dropblock_size=RFS_DROPBLOCK_SIZE[dataset],
      # A smoke run is a few steps: a short ramp reaches the full rate within it.
      dropblock_warmup_steps=2 if smoke else RFS_DROPBLOCK_WARMUP_STEPS,
      early_dropout=True,
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_args(
      arg,
      dict(dataset='omniglot', recipe='lifchitz', encoder='', head='', smoke=False, quick=False),
      choices={'dataset': tuple(DATASET_DEFAULTS), 'recipe': tuple(RECIPE_DEFAULTS)},
  )
  args = resolve_recipe(args)
  dataset, smoke, rfs = args['dataset'], args['smoke'], args['recipe'] == 'rfs'
  c = ml_collections.ConfigDict()
  c.recipe = args['recipe']
  defaults = DATASET_DEFAULTS[dataset]
  c.trainer = 'fsl'
  c.seed = 0
  # What convolutions and matrix products compute in: 'float32' (the papers') or 'bfloat16';
  # parameters, optimizer state, BatchNorm statistics, logits and losses stay float32.
  c.dtype = 'float32'
  # JAX's precision for float32 products: 'highest' is true float32, 'high' and 'default' are
  # TF32 on recent NVIDIA GPUs (groundwork/training/precision.py).
  c.matmul_precision = 'highest'
  # Training images kept on the accelerator, batches gathered there: 'auto' (when the uint8
  # images fit in a quarter of a device's memory), 'yes', or 'no' (host batches, prefetched).
  c.data_on_device = 'auto'
  c.dataset = dataset
  c.data_dir = defaults['data_dir']
  c.image_size = defaults['image_size']
  c.omniglot_val_alphabet = ''  # '' keeps the last checkpoint; else a base alphabet.
  c.max_base_images_per_class = 4 if smoke else 0  # 0 = all.

  c.encoder = args['encoder']
  kwargs = encoder_kwargs(args['encoder'], dataset, smoke)
  c.encoder_kwargs = {**kwargs, **rfs_encoder_kwargs(dataset, smoke)} if rfs else kwargs
  c.head = args['head']
  # DC+WIDE control: widen the implanted layers of the last block by this many
  # channels (0 = off), to show the gain of implanting is not just parameters.
  c.wide_control = ml_collections.ConfigDict(
      dict(width=0, layers=('conv',) if args['encoder'] == 'conv4' else ('conv1', 'conv2'))
  )
  c.classifier_scale_init = 10.0

  c.batch_size = 16 if smoke else (64 if dataset == 'omniglot' else 128)
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1 if not smoke else 0.05
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  c.optim.schedule = 'cosine' if dataset == 'omniglot' else 'step'
  c.optim.epochs = {'omniglot': 30, 'miniimagenet': 60}.get(dataset, 60)
  c.optim.decay_epochs = (20, 40, 50)
  c.optim.decay_factor = 0.1
  c.optim.warmup_epochs = 0
  if rfs:
    c.batch_size = 16 if smoke else 64
    c.optim.lr = 0.05
    c.optim.nesterov = False
    c.optim.epochs = RFS_EPOCHS[dataset]
    c.optim.decay_epochs = RFS_DECAY_EPOCHS[dataset]
  if args['quick']:
    c.optim.epochs = 8
  if smoke:
    c.optim.epochs = 2

  c.augment = augment_fields(dataset)
  if rfs:
    c.augment.color_jitter = RFS_COLOR_JITTER

  c.eval = ml_collections.ConfigDict()
  c.eval.n_way = 5
  c.eval.shots = (1, 5) if dataset == 'omniglot' else (1, 5, 10)
  c.eval.n_query = 15
  c.eval.episodes = 10_000
  c.eval.seed = 0  # The same fixed episode list for every method: paired comparisons.
  c.eval.scoring = 'pooled'  # The paper pools at test time; 'dense' averages positions.
  c.eval.batch_episodes = 500
  c.eval.embed_batch = 256
  c.eval.lake = dataset == 'omniglot'
  # 'pooled' | 'dense': also label propagation in each episode and Lake run (fsl/transductive.py)
  # over pooled features or DC's positions, paired with the prototypes on the same episodes.
  c.eval.transductive = 'none'
  # k, alpha and class-mass normalisation chosen on validation classes (Omniglot's Greek
  # alphabet held out of the base classes; benchmarks/transductive_sweep.py, docs/diffusion.md).
  c.eval.propagation = ml_collections.ConfigDict(
      dict(k=10, gamma=3.0, alpha=0.95, cg_iterations=20, class_mass=True)
  )
  # One-to-one assignment of each Lake run's 20 test images to its 20 classes: it exploits how
  # the runs are built (each class tested once), so it is off unless asked, and named.
  c.eval.lake_assignment = False
  # Retrieval metrics on the novel classes, Euclidean and diffusion re-ranking (Iscen et al.,
  # CVPR 2017: k, k_q, gamma, alpha of its global descriptors); groundwork/evaluation/retrieval.py.
  # Omniglot's Greek validation classes chose k=10, query_k=3, alpha=0.9, mutual=False.
  c.eval.retrieval = ml_collections.ConfigDict(
      dict(enabled=True, k=50, query_k=10, gamma=3.0, alpha=0.99, cg_iterations=20, mutual=True)
  )
  if args['quick']:
    c.eval.episodes = 1000
  if smoke:
    c.eval.episodes, c.eval.n_query, c.eval.batch_episodes = 20, 2, 8

  c.validation = ml_collections.ConfigDict(
      dict(shot=1, episodes=20 if smoke else 2000, seed=1, every_epochs=1 if smoke else 5)
  )
  c.checkpoint = ml_collections.ConfigDict(dict(every_epochs=1, keep=3))
  c.log_every_steps = 1 if smoke else 20
  # Learning curves and the method's figures in <workdir>/figures/ and TensorBoard (seconds).
  c.figures = True
  return c
