r"""Semi-supervised learning: supervised baseline, Mean Teacher, DLP and MT+DLP.

Iscen et al., "Label Propagation for Deep Semi-supervised Learning", CVPR 2019;
Tarvainen & Valpola, "Mean teachers are better role models", NIPS 2017.

Fashion-MNIST, 1,000 balanced labels drawn with seed 0 (CPU, minutes per method):

  python launch/train.py \
    --config=configs/ssl/semi_supervised.py:dataset=fashion_mnist,labels=1000,method=dlp \
    --workdir=workdirs/fmnist_dlp

  with method in supervised, mt, dlp, mt_dlp (dlp and mt_dlp may start from the
  supervised / mt workdir with --config.init_workdir=...). Test error % (student /
  teacher; pseudo-label accuracy %), each within +-0.7 (the 95% interval): supervised 16.10,
  mt 15.38 / 15.44, dlp 15.74 (83.23), mt_dlp 14.78 / 14.88 (84.49); 2-3 minutes each on
  2 CPU cores with the CPU kernels.

All 60,000 training images on one GPU (NVIDIA H100, ~2.5 min for the four methods side by
side), 8 epochs per semi-supervised stage, seeds 0, 1, 2 (each its own label draw):

  python launch/train.py \
    --config=configs/ssl/semi_supervised.py:dataset=fashion_mnist,labels=1000,method=mt_dlp \
    --config.seed=0 --config.train_subset=0 --config.epochs.mt=8 --config.epochs.dlp=8 \
    --config.epochs.mt_dlp=8 --config.eval_every_epochs=4 --workdir=workdirs/fmnist_full_mt_dlp

  test error % mean +- std over the 3 seeds: supervised 15.86 +- 0.41, mt 13.92 +- 0.25
  (teacher 13.84), dlp 14.75 +- 0.89 (pseudo-label acc 85.6), mt_dlp 13.47 +- 0.28
  (teacher 13.47, pseudo-label acc 86.7).

digits, 100 labels: dataset=digits,labels=100: supervised 4.46%, dlp 4.18% test error
  (+-2.1, the 95% interval on 359 test images), pseudo-labels 95.59% right
  (benchmarks/digits_label_spreading.py compares with scikit-learn's LabelSpreading).

CIFAR-10, 4,000 labels, CNN-13 (GPU; the paper: DLP 12.69% error, MT+DLP 10.61%):

  python launch/train.py \
    --config=configs/ssl/semi_supervised.py:dataset=cifar10,labels=4000,method=mt_dlp \
    --config.data_dir=/path/to/cifar10 --workdir=workdirs/cifar10_mt_dlp

CIFAR-100, 10,000 labels (the paper: MT+DLP 35.92% error); miniImageNet SSL split
(100 classes, 500 train / 100 test images each, ResNet-18, 4,000 or 10,000 labels).
These were not run here (no GPU, no copy of the data on this project's machines).

The reference's settings for every table of the paper (CIFAR-10 500/1,000/4,000 labels,
CIFAR-100 4,000/10,000, miniImageNet 4,000/10,000; each method) and the remaining
deviations: docs/recipes.md.

Args: dataset (fashion_mnist, digits, cifar10, cifar100, miniimagenet), labels,
method (supervised, mt, dlp, mt_dlp), recipe (lp_deepssl, project; default: lp_deepssl for
the reference's three datasets, project for fashion_mnist and digits), smoke.
"""

import dataclasses

import ml_collections

from groundwork.data.augment_spec import augment_spec_for
from groundwork.training.config_args import parse_args

_PAPER_EPOCHS = dict(supervised=180, mt=180, dlp=180, mt_dlp=180)
# A supervised epoch is a pass over the labelled images, the others a pass over
# the unlabelled ones (two-stream batches).
# The reference's datasets take LP-DeepSSL's settings (helpers.py `load_args`, cli.py
# defaults, README's labelled batch sizes, datasets.py transforms, architectures.py heads);
# docs/recipes.md cites each. Fashion-MNIST and digits are this project's CPU-sized setups.
DATASET_DEFAULTS = {
    # Sized for a 2-core CPU: Conv-4 of width 32 on a balanced 10,000-image subset of
    # the training set (1,000 labelled, 9,000 unlabelled); the full test set.
    'fashion_mnist': dict(
        data_dir='/usr/share/datasets/fashion-mnist',
        encoder='conv4',
        encoder_kwargs=dict(width=32),
        heads=('flax_dense', 'flax_dense'),
        batch_size=100,
        labeled_batch_size=50,
        epochs=dict(supervised=100, mt=6, dlp=6, mt_dlp=6),
        lr=0.05,
        ema_decay=0.97,
        # Mean Teacher needs two differently augmented views; Fashion-MNIST has no
        # augmentation of its own in the data layer, so it gets CIFAR's translate and
        # flip (at 2 pixels for 28x28), used by every method alike.
        augment=dict(translate=2, flip=True),
        eval_every_epochs=5,
        train_subset=10_000,
        # Its published figures were measured with the project recipe.
        recipe='project',
    ),
    'digits': dict(
        data_dir='',
        encoder='conv4',
        encoder_kwargs=dict(width=32, pool_blocks=2),
        heads=('flax_dense', 'flax_dense'),
        batch_size=50,
        labeled_batch_size=25,
        epochs=dict(supervised=300, mt=30, dlp=30, mt_dlp=30),
        lr=0.05,
        ema_decay=0.97,
        augment={},
        eval_every_epochs=5,
        train_subset=0,
        recipe='project',
    ),
    'cifar10': dict(
        data_dir='data/cifar10',
        encoder='cnn13',
        encoder_kwargs={},
        heads=('weight_norm', 'weight_norm'),
        batch_size=100,
        labeled_batch_size=50,
        epochs=_PAPER_EPOCHS,
        lr=0.05,
        ema_decay=0.97,
        augment={},  # Translate 4 (reflect) and flip: augment_spec's cifar10 default.
        eval_every_epochs=1,
        train_subset=0,
        recipe='lp_deepssl',
    ),
    'cifar100': dict(
        data_dir='data/cifar100',
        encoder='cnn13',
        encoder_kwargs={},
        heads=('weight_norm', 'weight_norm'),
        batch_size=128,
        labeled_batch_size=31,
        epochs=_PAPER_EPOCHS,
        lr=0.2,
        ema_decay=0.97,
        augment={},
        eval_every_epochs=1,
        train_subset=0,
        recipe='lp_deepssl',
    ),
    'miniimagenet': dict(
        data_dir='data/miniimagenet',
        encoder='resnet18',
        encoder_kwargs=dict(cifar_stem=False),
        # A plain linear first head (PyTorch's init), a weight-normalised second one.
        heads=('linear', 'weight_norm'),
        batch_size=128,
        labeled_batch_size=31,
        epochs=_PAPER_EPOCHS,
        lr=0.2,
        ema_decay=0.97,
        # torchvision's RandomRotation(10) (nearest) before the crop (pad 8) and flip.
        augment=dict(rotate_degrees=10.0, rotate_order=0),
        eval_every_epochs=30,
        train_subset=0,
        recipe='lp_deepssl',
    ),
}

# What each recipe chooses per method; the dataset-level settings are DATASET_DEFAULTS'.
RECIPES = {
    # ahmetius/LP-DeepSSL: --isL2=True for the supervised stage and DLP, False with --isMT;
    # graph features of training-augmented images; stage 2 loads stage 1's optimizer and
    # starts a new teacher, each teacher its own random init; affinities s^3 not clipped.
    'lp_deepssl': dict(
        normalize_features=('supervised', 'dlp'),
        features_from='augmented',
        clip_negative=False,
        teacher_init='random',
        stage2_optimizer='continue',
        stage2_teacher='fresh',
    ),
    # What this project's Fashion-MNIST and digits figures were measured with.
    'project': dict(
        normalize_features=(),
        features_from='clean',
        clip_negative=True,
        teacher_init='student',
        stage2_optimizer='fresh',
        stage2_teacher='continue',
    ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_args(
      arg,
      dict(dataset='fashion_mnist', labels=1000, method='dlp', recipe='', smoke=False),
      choices={'dataset': tuple(DATASET_DEFAULTS), 'method': ('supervised', 'mt', 'dlp', 'mt_dlp')},
  )
  d = DATASET_DEFAULTS[args['dataset']]
  recipe_name = args['recipe'] or d['recipe']
  if recipe_name not in RECIPES:
    raise ValueError(f'config arg recipe={recipe_name!r} is not one of {list(RECIPES)}.')
  recipe = RECIPES[recipe_name]
  smoke = args['smoke']
  c = ml_collections.ConfigDict()
  c.trainer = 'ssl'
  c.recipe = recipe_name
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
  c.dataset = args['dataset']
  c.data_dir = d['data_dir']
  c.labels = 100 if smoke else args['labels']  # Smoke: 100 labels of 600 images.
  c.label_file = ''  # A published <N>_balanced_labels/<split>.txt instead of a seeded draw.
  c.train_subset = 600 if smoke else d['train_subset']  # 0 = all training images.
  c.test_fraction = 0.2  # digits only: the seeded test split.
  c.method = args['method']
  # A workdir whose finished stage 1 (supervised for dlp, mt for mt_dlp) starts this
  # run's stage 2, so DLP and MT+DLP reuse the baselines' runs; '' trains stage 1.
  c.init_workdir = ''

  c.encoder = d['encoder']
  c.encoder_kwargs = dict(width=8, pool_blocks=2) if smoke else d['encoder_kwargs']
  if smoke:
    c.encoder = 'conv4'
  # Each head: 'linear' (PyTorch's nn.Linear init), 'weight_norm', or 'flax_dense'.
  c.heads = ml_collections.ConfigDict(dict(zip(('classifier', 'consistency'), d['heads'])))
  # L2-normalise the pooled feature before the heads (the reference's --isL2).
  c.normalize_features = c.method in recipe['normalize_features']

  c.batch_size = 20 if smoke else d['batch_size']
  c.labeled_batch_size = 10 if smoke else d['labeled_batch_size']
  c.epochs = ml_collections.ConfigDict(
      dict(supervised=1, mt=1, dlp=2, mt_dlp=2) if smoke else d['epochs']
  )
  # Stage 2 (dlp, mt_dlp) from stage 1's state: its optimizer 'continue's stage 1's
  # momentum or starts 'fresh'; a Mean Teacher stage 2 starts a 'fresh' teacher or
  # 'continue's stage 1's.
  c.stage2_optimizer = recipe['stage2_optimizer']
  c.stage2_teacher = recipe['stage2_teacher']

  # SGD Nesterov, weight decay 2e-4 on all parameters; the learning rate is set each
  # iteration by the Mean Teacher cosine, which would reach 0 after rampdown_ratio times
  # the stage's epochs (210 for 180 epochs in the reference: it stops above 0).
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = d['lr']
  c.optim.initial_lr = 0.0
  c.optim.rampup_epochs = 0
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 2e-4
  c.optim.schedule = 'constant'  # Overridden by the trainer's Mean Teacher schedule.
  c.optim.rampdown_ratio = 210 / 180

  c.mt = ml_collections.ConfigDict()
  c.mt.ema_decay = d['ema_decay']
  c.mt.consistency = 100.0
  c.mt.consistency_rampup = 5
  c.mt.logit_distance_cost = 0.01
  c.mt.teacher_init = recipe['teacher_init']  # 'random' (its own init) or 'student' (a copy).

  c.lp = ml_collections.ConfigDict()
  c.lp.k = 10 if smoke else 50
  c.lp.gamma = 3.0
  c.lp.alpha = 0.99
  c.lp.cg_iterations = 20
  c.lp.clip_negative = recipe['clip_negative']  # True: the paper's affinities, s^gamma >= 0.
  c.lp.knn_engine = 'auto'  # groundwork.knn: the CPU kernels' where installed, else exact JAX.
  c.lp.features_from = recipe['features_from']  # Graph features of 'augmented' or 'clean' images.

  spec = augment_spec_for(args['dataset'], train=True, **d['augment'])
  c.augment = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ('mean', 'std')}
  c.eval_batch_size = 500
  c.eval_every_epochs = 1 if smoke else d['eval_every_epochs']
  # Retrieval metrics of the final student on the test set, Euclidean and diffusion re-ranking
  # (Iscen et al., CVPR 2017, its global descriptors' settings); groundwork/evaluation/retrieval.py.
  c.eval_retrieval = ml_collections.ConfigDict(
      dict(enabled=True, k=50, query_k=10, gamma=3.0, alpha=0.99, cg_iterations=20, mutual=True)
  )
  # 0 = the whole test set; a smoke run ranks its first 500 images (seconds, not a minute).
  c.eval_retrieval.max_images = 500 if smoke else 0
  c.log_every_steps = 5 if smoke else 100
  # Learning curves and the method's figures in <workdir>/figures/ and TensorBoard (seconds).
  c.figures = True
  c.checkpoint = ml_collections.ConfigDict(dict(every_epochs=1, keep=2))
  return c
