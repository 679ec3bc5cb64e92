"""Optimisers and learning-rate schedules named in the configs.

Weight decay is added to the gradient before momentum, as PyTorch's SGD does,
so the papers' recipes (SGD Nesterov 0.9, wd 5e-4 / 2e-4) mean the same here.
"""

from typing import Callable

import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
SCHEDULES = ('constant', 'step', 'cosine')


def make_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> Schedule:
  """Learning rate per iteration from `optim.schedule`.

  - constant: `optim.lr`.
  - step: `optim.lr` times `optim.decay_factor` at each epoch in `optim.decay_epochs`.
  - cosine: half-cosine from `optim.lr` to 0 over `optim.epochs`, after a linear
    warm-up of `optim.get('warmup_epochs', 0)` epochs.
  """
  if optim.lr <= 0:
    raise ValueError(f'optim.lr={optim.lr} must be positive.')
  if optim.schedule == 'constant':
    return optax.constant_schedule(optim.lr)
  if optim.schedule == 'step':
    boundaries = {int(e * steps_per_epoch): optim.decay_factor for e in optim.decay_epochs}
    return optax.piecewise_constant_schedule(optim.lr, boundaries)
  if optim.schedule == 'cosine':
    total = max(1, int(optim.epochs * steps_per_epoch))
    warmup = int(optim.get('warmup_epochs', 0) * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else optim.lr,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=0.0,
    )
  raise ValueError(f'optim.schedule={optim.schedule!r} is not one of {list(SCHEDULES)}.')


def make_optimizer(
    optim: ml_collections.ConfigDict, steps_per_epoch: int, schedule: Schedule | None = None
) -> tuple[optax.GradientTransformation, Schedule]:
  """SGD (Nesterov when `optim.nesterov`) with coupled weight decay.

  `schedule` overrides `optim.schedule` for trainers with a recipe of their own.
  """
  if optim.lr <= 0:  # Also where a trainer brings its own schedule.
    raise ValueError(f'optim.lr={optim.lr} must be positive.')
  if optim.weight_decay < 0:
    raise ValueError(f'optim.weight_decay={optim.weight_decay} must be >= 0.')
  schedule = schedule or make_schedule(optim, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
  )
  return tx, schedule
