"""The stages of each semi-supervised method: their batches and the state at their start.

  supervised: [supervised]            mt:     [mean teacher]
  dlp:        [supervised, dlp]       mt_dlp: [mean teacher, mt + dlp]

A stage's steps are counted from `stage_start`, the global step it began at; its
learning-rate schedule and consistency ramp restart there, as the reference's
`train_stage2.py` restarts its epochs at 0. What carries over from stage 1 is chosen
by `config.stage2_optimizer` and `config.stage2_teacher`.
"""

import numpy as np
import optax

from groundwork import training
from groundwork.data import two_stream_batches
from semisup.classifier import new_teacher

METHODS = {
    'supervised': ('supervised',),
    'mt': ('mt',),
    'dlp': ('supervised', 'dlp'),
    'mt_dlp': ('mt', 'mt_dlp'),
}
MEAN_TEACHER_STAGES = ('mt', 'mt_dlp')
PROPAGATION_STAGES = ('dlp', 'mt_dlp')
STAGE2_OPTIMIZERS = ('continue', 'fresh')
STAGE2_TEACHERS = ('fresh', 'continue')


def known_labels(train, labeled_idx) -> np.ndarray:
  """[N] int32: the label of each labelled image, -1 elsewhere."""
  known = np.full(len(train.labels), -1, np.int32)
  known[labeled_idx] = train.labels[labeled_idx]
  return known


def fresh_teacher(config, stage_index: int) -> bool:
  """Whether this stage starts a teacher of its own (stage 1 always does)."""
  return stage_index == 0 or config.stage2_teacher == 'fresh'


def begin_stage(config, state, tx, stage_index: int, model, image_shape):
  """The state at a stage's first step: its optimizer, and a Mean Teacher stage 2's teacher.

  'continue' keeps the momentum of stage 1's last step and restarts the schedule's step
  count (the reference loads stage 1's optimizer state, then sets each iteration's learning
  rate from the stage's own epoch); 'fresh' starts from zero momentum.
  """
  fresh = tx.init(state.params)
  trace = optax.tree_utils.tree_get(state.opt_state, 'trace')
  if stage_index > 0 and config.stage2_optimizer == 'continue' and trace is not None:
    fresh = optax.tree_utils.tree_set(fresh, trace=trace)
  state = state.replace(tx=tx, opt_state=fresh)
  stage = METHODS[config.method][stage_index]
  if stage_index > 0 and stage in MEAN_TEACHER_STAGES and fresh_teacher(config, stage_index):
    params, stats = new_teacher(config, model, image_shape, state, int(state.step))
    state = state.replace(teacher_params=params, teacher_batch_stats=stats)
  return state


def stage_batches(stage: str, config, seed_epoch: int, labeled_idx, unlabeled_idx):
  if stage == 'supervised':  # Labelled images only, as the reference's stage 1.
    order = np.random.default_rng([config.seed, seed_epoch]).permutation(labeled_idx)
    count = len(order) // config.batch_size
    if count == 0:
      raise ValueError(
          f'config.batch_size={config.batch_size} exceeds the {len(order)} '
          'labelled images; lower it.'
      )
    return order[: count * config.batch_size].reshape(count, config.batch_size)
  return two_stream_batches(
      unlabeled_idx,
      labeled_idx,
      config.batch_size,
      config.labeled_batch_size,
      config.seed,
      seed_epoch,
  )


def stage_one_from(config, state, extra, labeled_idx, unlabeled_idx):
  """State and extra at the end of stage 1, read from `config.init_workdir`."""
  stage = METHODS[config.method][0]
  restored = training.Checkpointer(config.init_workdir).restore(state, extra)
  steps = len(stage_batches(stage, config, 0, labeled_idx, unlabeled_idx)) * config.epochs[stage]
  if restored is None or int(restored[1]['stage']) != 0 or int(restored[0].step) != steps:
    raise ValueError(
        f'config.init_workdir={config.init_workdir!r} does not hold a finished '
        f'{stage} stage of {config.epochs[stage]} epochs ({steps} steps) with '
        'this config; train it first, or leave init_workdir empty.'
    )
  print(f'Stage 1 ({stage}) taken from {config.init_workdir} at step {steps}.')
  return restored[0], restored[1]


def initial_extra(num_images: int, num_classes: int) -> dict:
  """What a checkpoint holds beside the state: the stage, where its steps began,
  and the current pseudo-labels, so a resumed run reuses them instead of re-drawing."""
  return {
      'stage': np.asarray(0),
      'stage_start': np.asarray(0),
      'pseudo_labels': np.zeros(num_images, np.int32),
      'weights': np.zeros(num_images, np.float32),
      'class_weights': np.ones(num_classes, np.float32),
  }
