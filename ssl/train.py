"""Semi-supervised training: supervised baseline, Mean Teacher, DLP and MT+DLP.

Iscen, Tolias, Avrithis, Chum, "Label Propagation for Deep Semi-supervised
Learning", CVPR 2019 (reference: ahmetius/LP-DeepSSL), and Tarvainen & Valpola,
"Mean teachers are better role models", NIPS 2017 (reference:
CuriousAI/mean-teacher). A run is a list of stages:

  supervised: [supervised]            mt:     [mean teacher]
  dlp:        [supervised, dlp]       mt_dlp: [mean teacher, mt + dlp]

Stage 2 starts from stage 1's weights with a fresh optimiser and schedule; at
the start of each of its epochs the student embeds all training images, label
propagation gives pseudo-labels with certainty weights, and one epoch trains on
all images with them.
"""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from groundwork import training
from groundwork.evaluation import map_in_batches
from groundwork.data import augment, augment_batch, augment_spec_for, two_stream_batches
from groundwork.encoders import WeightNormDense, build_encoder
from semisup import datasets
from semisup.label_propagation import (
    check_labels,
    check_settings,
    label_propagation,
    weighted_cross_entropy,
)
from semisup.mean_teacher import (
    consistency_weight,
    ema_update,
    logit_distance,
    mean_teacher_lr,
    softmax_mse,
)

METHODS = {
    'supervised': ('supervised',),
    'mt': ('mt',),
    'dlp': ('supervised', 'dlp'),
    'mt_dlp': ('mt', 'mt_dlp'),
}
MEAN_TEACHER_STAGES = ('mt', 'mt_dlp')
PROPAGATION_STAGES = ('dlp', 'mt_dlp')


def lp_settings(config: ml_collections.ConfigDict) -> dict:
  """The keyword arguments of `check_settings` and `label_propagation` from `config.lp`."""
  return dict(
      k=config.lp.k,
      gamma=config.lp.gamma,
      alpha=config.lp.alpha,
      cg_iterations=config.lp.cg_iterations,
      clip_negative=config.lp.clip_negative,
      knn_engine=config.lp.knn_engine,
  )


def check_config(config: ml_collections.ConfigDict) -> None:
  datasets.check_dataset_name(config.dataset)
  if config.method not in METHODS:
    raise ValueError(f'config.method={config.method!r} is not one of {list(METHODS)}.')
  if not 0 < config.labeled_batch_size < config.batch_size:
    raise ValueError(
        f'config.labeled_batch_size={config.labeled_batch_size} must lie strictly '
        f'between 0 and config.batch_size={config.batch_size}.'
    )
  if config.optim.lr <= 0:
    raise ValueError(f'config.optim.lr={config.optim.lr} must be positive.')
  if config.labels < 1 and not config.label_file:
    raise ValueError(f'config.labels={config.labels} must be at least 1.')
  check_settings(**lp_settings(config))
  for stage in METHODS[config.method]:
    if config.epochs[stage] < 1:
      raise ValueError(f'config.epochs.{stage}={config.epochs[stage]} must be at least 1.')


# ----------------------------------------------------------------------------
# Model and state: a student with two heads, and its EMA teacher.
# ----------------------------------------------------------------------------
class Classifier(nn.Module):
  """Encoder, then a class head and (Mean Teacher) a consistency head; returns
  ((class_logits, consistency_logits), pooled_features)."""

  encoder: nn.Module
  num_classes: int
  weight_norm_heads: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    _, pooled = self.encoder(x, train=train)
    head = WeightNormDense if self.weight_norm_heads else nn.Dense
    return (
        head(self.num_classes, name='head')(pooled),
        head(self.num_classes, name='consistency_head')(pooled),
    ), pooled


class SemiSupervisedState(training.TrainState):
  """TrainState plus the Mean Teacher's parameters and its own BN statistics."""

  teacher_params: Any = None
  teacher_batch_stats: Any = None


def create_state(config, num_classes: int, image_shape) -> SemiSupervisedState:
  encoder = build_encoder(config.encoder, **config.encoder_kwargs.to_dict())
  model = Classifier(encoder, num_classes, config.weight_norm_heads)
  key = training.seed_key(config.seed)
  variables = jax.jit(
      lambda k: model.init({'params': k, 'dropout': k}, jnp.zeros((1, *image_shape)), train=False)
  )(key)
  tx, _ = training.make_optimizer(
      config.optim, 1, schedule=mean_teacher_schedule(config.optim, 1, 1)
  )
  params, stats = variables['params'], variables.get('batch_stats', {})
  return SemiSupervisedState.create(
      apply_fn=model.apply,
      params=params,
      batch_stats=stats,
      tx=tx,
      # Own buffers: the step donates student and teacher alike.
      teacher_params=jax.tree.map(jnp.copy, params),
      teacher_batch_stats=jax.tree.map(jnp.copy, stats),
  )


# ----------------------------------------------------------------------------
# Train step: one pure function for every stage.
# ----------------------------------------------------------------------------
def train_step(
    state: SemiSupervisedState,
    images,
    labels,
    sample_weights,
    class_weights,
    cons_weight,
    rng,
    *,
    augment_spec,
    mean_teacher: bool,
    logit_distance_cost: float,
    ema_decay: float,
):
  """One SGD step. `labels` < 0 marks unlabelled images (no class loss).

  Class loss: sum_i w_i * zeta_{y_i} * CE_i / B over the whole batch, as both
  reference codes divide by the full minibatch size.
  """
  student_key, teacher_key, dropout_key, teacher_dropout_key = jax.random.split(rng, 4)
  student_x = augment_batch(student_key, images, augment_spec)
  variables = lambda p, s: {'params': p, 'batch_stats': s}
  if mean_teacher:
    # The teacher runs in train mode on its own augmentation, keeping its own BN statistics.
    ((teacher_logits, _), _), teacher_updates = state.apply_fn(
        variables(state.teacher_params, state.teacher_batch_stats),
        augment_batch(teacher_key, images, augment_spec),
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': teacher_dropout_key},
    )
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
  labeled = labels >= 0

  def loss_fn(params):
    ((class_logits, cons_logits), _), updates = state.apply_fn(
        variables(params, state.batch_stats),
        student_x,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': dropout_key},
    )
    class_loss = weighted_cross_entropy(
        class_logits,
        jnp.where(labeled, labels, 0),
        jnp.where(labeled, sample_weights, 0.0),
        class_weights,
    )
    terms = {'class_loss': class_loss}
    if mean_teacher:
      terms['consistency_loss'] = cons_weight * softmax_mse(cons_logits, teacher_logits)
      terms['logit_distance'] = logit_distance_cost * logit_distance(class_logits, cons_logits)
    loss = sum(terms.values())
    return loss, (updates['batch_stats'], terms)

  (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if mean_teacher:
    state = state.replace(
        teacher_params=ema_update(state.teacher_params, state.params, state.step, ema_decay),
        teacher_batch_stats=teacher_updates['batch_stats'],
    )
  return state, {'loss': loss, **terms}


# ----------------------------------------------------------------------------
# Embedding, evaluation and the learning-rate schedule.
# ----------------------------------------------------------------------------
def make_apply_fns(config):
  """Jitted eval-mode functions: (student pooled features, student logits, teacher logits)."""
  spec = augment_spec_for(config.dataset, train=False)

  def run(params, stats, apply_fn, images):
    (logits, _), pooled = apply_fn(
        {'params': params, 'batch_stats': stats},
        augment.normalize(images, spec.mean, spec.std),
        train=False,
    )
    return logits, pooled

  @jax.jit
  def student(state, images):
    return run(state.params, state.batch_stats, state.apply_fn, images)

  @jax.jit
  def teacher(state, images):
    return run(state.teacher_params, state.teacher_batch_stats, state.apply_fn, images)

  return student, teacher


def test_error(state, fn, test, batch_size) -> float:
  logits, _ = map_in_batches(lambda b: fn(state, b), test.images, batch_size)
  return float(np.mean(np.argmax(logits, -1) != test.labels))


def mean_teacher_schedule(optim, steps_per_epoch: int, stage_epochs: int):
  """The Mean Teacher learning rate per iteration of a stage whose cosine would
  reach 0 after `optim.rampdown_ratio * stage_epochs` epochs (past its last)."""
  return lambda step: mean_teacher_lr(
      step / steps_per_epoch,
      optim.lr,
      optim.initial_lr,
      optim.rampup_epochs,
      optim.rampdown_ratio * stage_epochs,
  )


def known_labels(train, labeled_idx) -> np.ndarray:
  """[N] int32: the label of each labelled image, -1 elsewhere."""
  known = np.full(len(train.labels), -1, np.int32)
  known[labeled_idx] = train.labels[labeled_idx]
  return known


def embed_on_device(fn, images: np.ndarray, batch_size: int) -> jax.Array:
  """`fn` over `images` in batches, outputs concatenated on the device (map_in_batches
  copies each batch's output to the host). The last batch is padded with copies of its
  first image, so a jitted `fn` compiles once."""
  size = min(batch_size, len(images))
  parts = []
  for start in range(0, len(images), size):
    chunk = images[start : start + size]
    real = len(chunk)
    if real < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - real, axis=0)])
    parts.append(fn(chunk)[:real])
  return jnp.concatenate(parts)


def propagate(state, config, student, train, labeled_idx):
  """Pseudo-labels, certainty weights and class weights for every training image.

  The features stay on the device from the embedding to the pseudo-labels, which come
  back to the host once, for batching. Settings and labels were checked before training.
  """
  features = embed_on_device(lambda b: student(state, b)[1], train.images, config.eval_batch_size)
  known = known_labels(train, labeled_idx)
  result = label_propagation(features, known, known >= 0, train.num_classes, **lp_settings(config))
  pseudo, weights, class_weights = jax.device_get(
      (result.pseudo_labels, result.weights, result.class_weights)
  )
  return (
      np.asarray(pseudo, np.int32),
      np.asarray(weights, np.float32),
      np.asarray(class_weights, np.float32),
  )


# ----------------------------------------------------------------------------
# The run: stages of epochs, checkpointed, resumable.
# ----------------------------------------------------------------------------
def pseudo_label_accuracy(pseudo_labels, train, unlabeled_idx) -> float:
  return float(np.mean(np.asarray(pseudo_labels)[unlabeled_idx] == train.labels[unlabeled_idx]))


def final_results(config, workdir, state, extra, apply_fns, train, test, unlabeled_idx) -> dict:
  """results.json, from the state and the checkpointed pseudo-labels alone, so a
  resumed or re-evaluated run writes the same file as an uninterrupted one."""
  student, teacher = apply_fns
  stages = METHODS[config.method]
  results = {'test': {'error': test_error(state, student, test, config.eval_batch_size)}}
  if any(stage in MEAN_TEACHER_STAGES for stage in stages):
    results['test']['error_teacher'] = test_error(state, teacher, test, config.eval_batch_size)
  if any(stage in PROPAGATION_STAGES for stage in stages):
    results['pseudo_label_accuracy'] = pseudo_label_accuracy(
        extra['pseudo_labels'], train, unlabeled_idx
    )
  training.write_json(os.path.join(workdir, 'results.json'), results)
  return results


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  check_config(config)
  train, test = datasets.load(config)
  labeled_idx, unlabeled_idx = datasets.split_indices(config, train)
  if any(stage in PROPAGATION_STAGES for stage in METHODS[config.method]):
    check_settings(**lp_settings(config), num_images=len(train.labels))
    known = known_labels(train, labeled_idx)
    check_labels(known, known >= 0, train.num_classes)
  mesh = training.data_mesh()
  training.check_batch_size(config.batch_size, mesh)
  os.makedirs(workdir, exist_ok=True)
  training.save_config(workdir, config)

  stages = METHODS[config.method]
  epochs = config.epochs
  state = create_state(config, train.num_classes, train.images.shape[1:])
  n = len(train.labels)
  extra = initial_extra(n, train.num_classes)
  checkpoints = training.Checkpointer(workdir, keep=config.checkpoint.keep)
  restored = checkpoints.restore(state, extra)
  if restored is not None:
    state, extra, _ = restored
    print(f'Resumed at step {int(state.step)} (stage {stages[int(extra["stage"])]}).')
  elif config.init_workdir:
    state, extra = stage_one_from(config, state, extra, labeled_idx, unlabeled_idx)
  student, teacher = make_apply_fns(config)
  spec = augment_spec_for(config.dataset, train=True, **config.augment)
  logger = None

  with training.StopRequest() as stop:
    for stage_index in range(int(extra['stage']), len(stages)):
      stage = stages[stage_index]
      mean_teacher = stage in MEAN_TEACHER_STAGES
      steps_per_epoch = len(stage_batches(stage, config, 0, labeled_idx, unlabeled_idx))
      schedule = mean_teacher_schedule(config.optim, steps_per_epoch, epochs[stage])
      tx, _ = training.make_optimizer(config.optim, steps_per_epoch, schedule=schedule)
      if int(extra['stage']) != stage_index:  # Entering a new stage: restart the schedule.
        extra = {**extra, 'stage': np.asarray(stage_index), 'stage_start': np.asarray(state.step)}
      stage_start = int(extra['stage_start'])
      # A fresh optimiser per stage, as the reference's stage 2 (its state is
      # restored below when resuming mid-stage, since the tree is the same).
      if int(state.step) == stage_start:
        state = state.replace(tx=tx, opt_state=tx.init(state.params))
      else:
        state = state.replace(tx=tx)
      state = training.replicate(state, mesh)
      step_fn = jax.jit(
          functools.partial(
              train_step,
              augment_spec=spec,
              mean_teacher=mean_teacher,
              logit_distance_cost=config.mt.logit_distance_cost,
              ema_decay=config.mt.ema_decay,
          ),
          donate_argnums=(0,),
      )
      total = steps_per_epoch * epochs[stage]
      logger = training.MetricLogger(workdir, total, prefix=stage)
      first_epoch = (int(state.step) - stage_start) // steps_per_epoch
      for epoch in range(first_epoch, epochs[stage]):
        if stage in PROPAGATION_STAGES and int(state.step) == stage_start + epoch * steps_per_epoch:
          pseudo, weights, class_weights = propagate(state, config, student, train, labeled_idx)
          extra = {
              **extra,
              'pseudo_labels': pseudo,
              'weights': weights,
              'class_weights': class_weights,
          }
          logger.log(
              int(state.step) - stage_start,
              {'pseudo_label_accuracy': pseudo_label_accuracy(pseudo, train, unlabeled_idx)},
          )
        if stage in PROPAGATION_STAGES:
          labels, weights = np.asarray(extra['pseudo_labels']), np.asarray(extra['weights'])
          class_weights = np.asarray(extra['class_weights'])
        else:
          labels = np.full(n, -1, np.int32)
          labels[labeled_idx] = train.labels[labeled_idx]
          weights, class_weights = np.ones(n, np.float32), np.ones(train.num_classes, np.float32)
        cons_weight = consistency_weight(epoch, config.mt.consistency, config.mt.consistency_rampup)
        batches = stage_batches(
            stage, config, stage_index * 100_000 + epoch, labeled_idx, unlabeled_idx
        )
        for i in range((int(state.step) - stage_start) % steps_per_epoch, steps_per_epoch):
          idx = batches[i]
          step = int(state.step)
          batch = training.shard_batch((train.images[idx], labels[idx], weights[idx]), mesh)
          state, metrics = step_fn(
              state, *batch, class_weights, cons_weight, training.step_rng(config.seed, step)
          )
          local = step + 1 - stage_start
          if local % config.log_every_steps == 0 or local == total:
            scalars = {k: float(v) for k, v in metrics.items()}
            training.check_finite(scalars['loss'], step + 1, checkpoints.directory)
            if mean_teacher:
              scalars['consistency_weight'] = float(cons_weight)
            logger.log(local, {**scalars, 'lr': float(schedule(local - 1))})
          if stop.requested:
            checkpoints.save(step + 1, state, extra)
            stop.stop(step + 1, checkpoints.directory)
        if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == epochs[stage]:
          scalars = {'test_error': test_error(state, student, test, config.eval_batch_size)}
          if mean_teacher:
            scalars['test_error_teacher'] = test_error(state, teacher, test, config.eval_batch_size)
          logger.log(int(state.step) - stage_start, scalars)
        if (epoch + 1) % config.checkpoint.every_epochs == 0 or epoch + 1 == epochs[stage]:
          checkpoints.save(int(state.step), state, extra)
      logger.flush()

  results = final_results(
      config, workdir, state, extra, (student, teacher), train, test, unlabeled_idx
  )
  print(
      f'Test error: {results["test"]}; pseudo-label accuracy: '
      f'{results.get("pseudo_label_accuracy", "n/a")}'
  )
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Test error of the last checkpoint of a trained workdir."""
  check_config(config)
  train, test = datasets.load(config)
  state = create_state(config, train.num_classes, train.images.shape[1:])
  n = len(train.labels)
  extra = initial_extra(n, train.num_classes)
  restored = training.Checkpointer(workdir).restore(state, extra)
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints: train first.')
  _, unlabeled_idx = datasets.split_indices(config, train)
  return final_results(
      config, workdir, restored[0], restored[1], make_apply_fns(config), train, test, unlabeled_idx
  )
