"""Semi-supervised training: supervised baseline, Mean Teacher, DLP and MT+DLP.

Iscen, Tolias, Avrithis, Chum, "Label Propagation for Deep Semi-supervised
Learning", CVPR 2019 (reference: ahmetius/LP-DeepSSL), and Tarvainen & Valpola,
"Mean teachers are better role models", NIPS 2017 (reference:
CuriousAI/mean-teacher). A run is a list of stages:

  supervised: [supervised]            mt:     [mean teacher]
  dlp:        [supervised, dlp]       mt_dlp: [mean teacher, mt + dlp]

Stage 2 starts from stage 1's weights with its own learning-rate schedule and
consistency ramp; its optimizer keeps stage 1's momentum (`stage2_optimizer`
'continue', as the reference, which loads stage 1's optimizer state) or starts
anew ('fresh'), and a Mean Teacher stage 2 starts a new teacher (`stage2_teacher`
'fresh', as the reference) or keeps stage 1's. At the start of each of its epochs
the student embeds all training images (`lp.features_from`), label propagation
gives pseudo-labels with certainty weights, and one epoch trains on all images
with them. The network and its state are in `classifier.py`.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from groundwork import training
from groundwork.evaluation import retrieval
from groundwork.data import augment_batch, augment_spec_for, prefetch
from semisup import datasets, figures
from semisup.classifier import (
    FEATURE_SOURCES,
    HEAD_TYPES,
    TEACHER_INITS,
    SemiSupervisedState,
    build_model,
    create_state,
    error_rate,
    make_apply_fns,
    propagation_features,
    retrieval_settings,
    test_retrieval,
)
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
    mean_teacher_schedule,
    softmax_mse,
)
from semisup.stages import (
    MEAN_TEACHER_STAGES,
    METHODS,
    PROPAGATION_STAGES,
    STAGE2_OPTIMIZERS,
    STAGE2_TEACHERS,
    begin_stage,
    fresh_teacher,
    initial_extra,
    known_labels,
    stage_batches,
    stage_one_from,
)
from semisup.trained import model_description


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


def _check_choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'config.{name}={value!r} is not one of {list(allowed)}.')


def check_config(config: ml_collections.ConfigDict) -> None:
  datasets.check_dataset_name(config.dataset)
  _check_choice('method', config.method, METHODS)
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
  _check_choice('heads.classifier', config.heads.classifier, HEAD_TYPES)
  _check_choice('heads.consistency', config.heads.consistency, HEAD_TYPES)
  _check_choice('normalize_features', config.normalize_features, (True, False))
  _check_choice('lp.features_from', config.lp.features_from, FEATURE_SOURCES)
  _check_choice('mt.teacher_init', config.mt.teacher_init, TEACHER_INITS)
  _check_choice('stage2_optimizer', config.stage2_optimizer, STAGE2_OPTIMIZERS)
  _check_choice('stage2_teacher', config.stage2_teacher, STAGE2_TEACHERS)
  if not 0.0 <= config.mt.ema_decay < 1.0:
    raise ValueError(f'config.mt.ema_decay={config.mt.ema_decay} must lie in [0, 1).')
  if not 0.0 <= config.augment.rotate_degrees <= 180.0:
    raise ValueError(
        f'config.augment.rotate_degrees={config.augment.rotate_degrees} must lie in '
        '[0, 180] (0 = no rotation).'
    )
  _check_choice('augment.rotate_order', config.augment.rotate_order, (0, 1))
  training.check_precision(config)
  if config.eval_retrieval.enabled:
    retrieval.check_settings(config_path='config.eval_retrieval', **retrieval_settings(config))
    if config.eval_retrieval.max_images < 0:
      raise ValueError('config.eval_retrieval.max_images must be >= 0 (0 = the whole test set).')
  prefetch.check_data_on_device(config.get('data_on_device', 'auto'))


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
    ema_step_offset: int = 0,
):
  """One SGD step. `labels` < 0 marks unlabelled images (no class loss).

  Class loss: sum_i w_i * zeta_{y_i} * CE_i / B over the whole batch, as both
  reference codes divide by the full minibatch size. The teacher's average counts
  steps from `ema_step_offset`, the step its teacher was started at.
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
        teacher_params=ema_update(
            state.teacher_params, state.params, state.step - ema_step_offset, ema_decay
        ),
        teacher_batch_stats=teacher_updates['batch_stats'],
    )
  return state, {'loss': loss, **terms}


# ----------------------------------------------------------------------------
# Stages: their batches, the state at their first step, label propagation.
# ----------------------------------------------------------------------------
def propagate(state, config, fns, train, labeled_idx, step: int):
  """Pseudo-labels, certainty weights and class weights for every training image.

  The features stay on the device from the embedding to the pseudo-labels, which come
  back to the host once, for batching. Settings and labels were checked before training.
  With several processes each embeds its share and every process propagates over all the
  features (`fns` are `training.data_parallel`); process 0's pseudo-labels are everyone's.
  """
  features = propagation_features(state, config, fns, train.images, step)
  known = known_labels(train, labeled_idx)
  result = label_propagation(features, known, known >= 0, train.num_classes, **lp_settings(config))
  pseudo, weights, class_weights = training.from_process_0(
      jax.device_get((result.pseudo_labels, result.weights, result.class_weights))
  )
  return (
      np.asarray(pseudo, np.int32),
      np.asarray(weights, np.float32),
      np.asarray(class_weights, np.float32),
  )


def pseudo_label_accuracy(pseudo_labels, train, unlabeled_idx) -> float:
  return float(np.mean(np.asarray(pseudo_labels)[unlabeled_idx] == train.labels[unlabeled_idx]))


# ----------------------------------------------------------------------------
# The run: stages of epochs, checkpointed, resumable.
# ----------------------------------------------------------------------------
def final_results(config, workdir, state, extra, fns, train, test, unlabeled_idx) -> dict:
  """results.json, from the state and the checkpointed pseudo-labels alone, so a
  resumed or re-evaluated run writes the same file as an uninterrupted one."""
  stages = METHODS[config.method]
  results = {'test': {'error': error_rate(state, fns.student, test, config.eval_batch_size)}}
  if any(stage in MEAN_TEACHER_STAGES for stage in stages):
    results['test']['error_teacher'] = error_rate(state, fns.teacher, test, config.eval_batch_size)
  if any(stage in PROPAGATION_STAGES for stage in stages):
    results['pseudo_label_accuracy'] = pseudo_label_accuracy(
        extra['pseudo_labels'], train, unlabeled_idx
    )
  if config.eval_retrieval.enabled:
    results['retrieval'] = test_retrieval(config, state, fns.student, test)
    scalars = {f'retrieval_{k}': v for k, v in results['retrieval'].items()}
    training.MetricLogger(workdir, int(state.step)).log_results(int(state.step), scalars, 'test')
  results['precision'] = training.precision_record(config)
  if training.is_main_process():  # Every process holds the same results; one writes.
    training.write_json(os.path.join(workdir, 'results.json'), results)
  print(
      f'Test error: {results["test"]}; pseudo-label accuracy: '
      f'{results.get("pseudo_label_accuracy", "n/a")}'
  )
  return results


@training.with_matmul_precision
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict:
  check_config(config)
  # The workdir's lock, a write probe and its config.json's check, before any data is read.
  run = training.start_run(workdir, config, allow_config_change)
  train, test = datasets.load(config)
  labeled_idx, unlabeled_idx = datasets.split_indices(config, train)
  if any(stage in PROPAGATION_STAGES for stage in METHODS[config.method]):
    check_settings(**lp_settings(config), num_images=len(train.labels))
    known = known_labels(train, labeled_idx)
    check_labels(known, known >= 0, train.num_classes)
  mesh = training.data_mesh()
  training.check_batch_size(config.batch_size, mesh)

  stages = METHODS[config.method]
  epochs = config.epochs
  image_shape = train.images.shape[1:]
  state = create_state(config, train.num_classes, image_shape)
  n = len(train.labels)
  extra = initial_extra(n, train.num_classes)
  checkpoints = training.Checkpointer(workdir, keep=config.checkpoint.keep)
  restored = checkpoints.restore(state, extra)
  if restored is not None:
    state, extra, _ = restored
    print(f'Resumed at step {int(state.step)} (stage {stages[int(extra["stage"])]}).')
  elif config.init_workdir:
    state, extra = stage_one_from(config, state, extra, labeled_idx, unlabeled_idx)
  run.save_config(model_description(config, train))  # Every check has passed.
  model = build_model(config, train.num_classes)
  # Evaluation batches split over the mesh, outputs whole on every process.
  fns = make_apply_fns(config)
  fns = fns._make(training.data_parallel(fn, mesh, batch_argnums=(1,)) for fn in fns)
  spec = augment_spec_for(config.dataset, train=True, **config.augment)
  logger = None
  # Kept on the devices, the images are gathered there from each batch's indices.
  resident = prefetch.keep_on_device(config.get('data_on_device', 'auto'), train.images.nbytes)
  images = training.replicate(train.images, mesh) if resident else train.images
  place = functools.partial(training.shard_local_batch, mesh=mesh)

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
      if int(state.step) == stage_start:
        state = begin_stage(config, state, tx, stage_index, model, image_shape)
      else:  # Resuming mid-stage: the checkpoint holds this stage's optimizer and teacher.
        state = state.replace(tx=tx)
      state = training.replicate(state, mesh)
      step_fn = jax.jit(
          functools.partial(
              train_step,
              augment_spec=spec,
              mean_teacher=mean_teacher,
              logit_distance_cost=config.mt.logit_distance_cost,
              ema_decay=config.mt.ema_decay,
              ema_step_offset=stage_start if fresh_teacher(config, stage_index) else 0,
          ),
          donate_argnums=(0,),
      )
      total = steps_per_epoch * epochs[stage]
      logger = training.MetricLogger(workdir, total, prefix=stage)
      first_epoch = (int(state.step) - stage_start) // steps_per_epoch
      for epoch in range(first_epoch, epochs[stage]):
        if stage in PROPAGATION_STAGES and int(state.step) == stage_start + epoch * steps_per_epoch:
          pseudo, weights, class_weights = propagate(
              state, config, fns, train, labeled_idx, int(state.step)
          )
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
          labels = known_labels(train, labeled_idx)
          weights, class_weights = np.ones(n, np.float32), np.ones(train.num_classes, np.float32)
        cons_weight = consistency_weight(epoch, config.mt.consistency, config.mt.consistency_rampup)
        batches = stage_batches(
            stage, config, stage_index * 100_000 + epoch, labeled_idx, unlabeled_idx
        )
        per_image = training.replicate((labels, weights), mesh) if resident else (labels, weights)
        first = (int(state.step) - stage_start) % steps_per_epoch
        # Every process draws the same global batches and reads only its rows of them.
        local = training.local_rows(batches[first:], mesh)
        device_batches = prefetch.gathered_batches((images, *per_image), local, place)
        for i, batch in zip(range(first, steps_per_epoch), device_batches):
          step = stage_start + epoch * steps_per_epoch + i  # Not state.step: no wait on it.
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
          scalars = {'test_error': error_rate(state, fns.student, test, config.eval_batch_size)}
          if mean_teacher:
            scalars['test_error_teacher'] = error_rate(
                state, fns.teacher, test, config.eval_batch_size
            )
          logger.log(int(state.step) - stage_start, scalars)
        if (epoch + 1) % config.checkpoint.every_epochs == 0 or epoch + 1 == epochs[stage]:
          checkpoints.save(int(state.step), state, extra)
      logger.flush()

  results = final_results(config, workdir, state, extra, fns, train, test, unlabeled_idx)
  figures.write_run_figures(config, workdir, state, extra, fns, train, unlabeled_idx)
  run.finish(int(state.step))
  return results


@training.with_matmul_precision
def evaluate(
    config: ml_collections.ConfigDict, workdir: str, output_dir: str | None = None
) -> dict:
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
      config,
      output_dir or workdir,
      restored[0],
      restored[1],
      make_apply_fns(config),
      train,
      test,
      unlabeled_idx,
  )
