r"""DC+IMP: implants trained per test episode on a frozen dense-classification network.

Lifchitz et al., CVPR 2019, Sec. 4. Needs a base workdir trained with
configs/fsl/dense_classification.py and head=dc. The DC network alone and
DC+IMP are evaluated on the same fixed episodes (paired gain with its 95% CI).

Omniglot (CPU), on top of the DC run of the README:

  python launch/train.py --config=configs/fsl/implanting.py:dataset=omniglot \
    --config.base_workdir=workdirs/omniglot_conv4_dc --config.data_dir=../shared/data/omniglot \
    --workdir=workdirs/omniglot_conv4_imp

  With --config.eval.batch_episodes=1 (on a CPU larger batches gain nothing) on the 10,000
  episodes, 5-way 5-shot: DC 97.01 ± 0.06, DC+IMP 97.95 ± 0.05, paired gain +0.94 ± 0.04;
  about 0.08 s per episode on 2 CPU cores with the CPU kernels.

miniImageNet (GPU), ResNet-12 base, implants in the last block:

  python launch/train.py --config=configs/fsl/implanting.py:dataset=miniimagenet \
    --config.base_workdir=workdirs/mini_dc --config.data_dir=/path/to/miniimagenet \
    --workdir=workdirs/mini_imp

  The paper reports DC+IMP 79.77 (5-shot) and 83.83 (10-shot) against DC 78.95 / 82.66.
  Not run here (no copy of miniImageNet). On an NVIDIA H100, 66.7 episodes/s for ResNet-12
  84x84 at batch_episodes=64 after a ~110 s compile, ~62 GB of GPU memory (it grows linearly
  with --config.eval.batch_episodes; a batch the GPU cannot hold is halved until one fits); on
  the 2-core CPU 1.9 s per ResNet-12 episode at batch_episodes=1 (docs/performance.md).

Args: dataset (omniglot, miniimagenet, cifar_fs, fc100), smoke.
"""

import ml_collections

from groundwork.training.config_args import parse_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_args(
      arg,
      dict(dataset='omniglot', smoke=False),
      choices={'dataset': ('omniglot', 'miniimagenet', 'cifar_fs', 'fc100')},
  )
  smoke = args['smoke']
  c = ml_collections.ConfigDict()
  c.trainer = 'fsl_implanting'
  c.seed = 0
  # What convolutions and matrix products compute in: 'float32' (the papers') or 'bfloat16';
  # parameters, optimizer state, BatchNorm statistics, logits and losses stay float32.
  c.dtype = 'float32'
  # JAX's precision for float32 products: 'highest' is true float32, 'high' and 'default' are
  # TF32 on recent NVIDIA GPUs (groundwork/training/precision.py).
  c.matmul_precision = 'highest'
  c.base_workdir = ''  # A workdir trained by dense_classification.py with head=dc.
  c.data_dir = ''  # '' reads the data_dir the base run used.

  c.implant = ml_collections.ConfigDict()
  if args['dataset'] == 'omniglot':
    c.implant.layers = ('conv',)  # Conv-4's last block has one conv.
    c.implant.width = 16
  else:
    c.implant.layers = ('conv1', 'conv2')  # ResNet-12's last block.
    c.implant.width = 16
  c.implant.steps = 2 if smoke else 50
  c.implant.learning_rate = 1e-3
  c.implant.optimizer = 'adam'
  c.implant.scoring = 'pooled'

  c.eval = ml_collections.ConfigDict()
  c.eval.n_way = 5
  # The paper reports implanting for 5 and 10 shots; Omniglot's 20 drawers allow 5.
  c.eval.shots = (5,) if args['dataset'] == 'omniglot' else (5, 10)
  c.eval.n_query = 2 if smoke else 15
  c.eval.episodes = 8 if smoke else 10_000
  c.eval.seed = 0  # The dense_classification runs use the same episode list.
  c.eval.batch_episodes = 4 if smoke else 64
  return c
