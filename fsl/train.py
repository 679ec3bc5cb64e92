"""Few-shot base training (GAP or dense classification) and episodic evaluation.

Lifchitz et al., "Dense Classification and Implanting for Few-Shot Learning",
CVPR 2019. Reads top to bottom: data, model, train step, checkpoints, the
training loop, then novel-class evaluation written to results.json.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fsl import fewshot_data, figures
from fsl.cosine_classifier import CosineClassifier
from fsl.dense_loss import dense_loss, gap_loss
from fsl.episodic_evaluation import (
    EPISODE_ACCURACIES_FILE,
    check_inference_rules,
    embed_in_batches,
    episode_accuracies,
    inference_rules,
    lake_results,
    paired_difference,
    print_results,
    print_progress,
    result_scalars,
    save_episode_accuracies,
    summarize,
)
from fsl.implanting import wide_control_encoder
from fsl.trained import model_description
from groundwork import training
from groundwork.data import AugmentSpec, augment, augment_batch, augment_spec_for, make_episodes
from groundwork.data import prefetch
from groundwork.data.episodes import episode_list_id
from groundwork.encoders import TorchLinear, build_encoder, takes_step
from groundwork.evaluation.retrieval import retrieval_report

HEADS = ('gap', 'dc', 'linear')
SCORINGS = ('pooled', 'dense')


# ----------------------------------------------------------------------------
# Configuration checks: before any data is read or anything compiled.
# ----------------------------------------------------------------------------
def check_config(config: ml_collections.ConfigDict) -> None:
  if config.head not in HEADS:
    raise ValueError(f'config.head={config.head!r} is not one of {list(HEADS)}.')
  if config.eval.scoring not in SCORINGS:
    raise ValueError(f'config.eval.scoring={config.eval.scoring!r} is not one of {list(SCORINGS)}.')
  for field in (
      'batch_size',
      'optim.epochs',
      'eval.n_way',
      'eval.n_query',
      'eval.episodes',
      'eval.batch_episodes',
      'eval.embed_batch',
      'validation.episodes',
      'validation.shot',
      'validation.every_epochs',
      'checkpoint.every_epochs',
      'checkpoint.keep',
      'log_every_steps',
  ):
    value = config
    for part in field.split('.'):
      value = value[part]
    if value < 1:
      raise ValueError(f'config.{field}={value} must be at least 1.')
  if any(k < 1 for k in config.eval.shots):
    raise ValueError(
        f'config.eval.shots={tuple(config.eval.shots)}: every shot count must be >= 1.'
    )
  check_inference_rules(config.eval)
  fewshot_data.check_dataset_name(config.dataset)
  training.check_precision(config)
  prefetch.check_data_on_device(config.get('data_on_device', 'auto'))


# ----------------------------------------------------------------------------
# Model: a shared encoder and a cosine classifier over pooled or dense features
# (or RFS's linear classifier over pooled ones).
# ----------------------------------------------------------------------------
class FewShotNet(nn.Module):
  """Encoder + classifier; returns (logits, {'feature_map', 'pooled'}).

  `step`, the training step, goes to encoders that take one (ResNet-12's DropBlock warm-up).
  """

  encoder: nn.Module
  num_classes: int
  head: str = 'dc'
  scale_init: float = 10.0

  @nn.compact
  def __call__(self, x, train: bool, step=None):
    extra = {'step': step} if step is not None and takes_step(self.encoder) else {}
    feature_map, pooled = self.encoder(x, train=train, **extra)
    if self.head == 'linear':
      logits = TorchLinear(self.num_classes, name='classifier')(pooled)
    else:
      classifier = CosineClassifier(self.num_classes, self.scale_init, name='classifier')
      logits = classifier(feature_map if self.head == 'dc' else pooled)
    return logits, {'feature_map': feature_map, 'pooled': pooled}


def build_model(config, num_classes: int) -> FewShotNet:
  encoder = build_encoder(
      config.encoder, dtype=training.compute_dtype(config), **config.encoder_kwargs.to_dict()
  )
  wide = config.get('wide_control')  # Absent from workdirs written before it existed.
  if wide is not None and wide.width:
    if getattr(encoder, 'dropblock_warmup_steps', 0) or getattr(encoder, 'early_dropout', False):
      raise ValueError(
          f'config.wide_control.width={wide.width} rebuilds the encoder without the DropBlock '
          'warm-up and early dropout of config.encoder_kwargs; set config.wide_control.width=0 '
          'or encoder_kwargs.dropblock_warmup_steps=0 and encoder_kwargs.early_dropout=False.'
      )
    # DC+WIDE: the implanted architecture trained from scratch on the base classes.
    encoder = wide_control_encoder(encoder, tuple(wide.layers), wide.width)
  return FewShotNet(encoder, num_classes, config.head, config.classifier_scale_init)


def create_state(config, model, image_shape, tx) -> training.TrainState:
  key = training.seed_key(config.seed)
  variables = jax.jit(
      lambda k: model.init(
          {'params': k, 'dropout': k}, jnp.zeros((1, *image_shape), jnp.float32), train=False
      )
  )(key)
  return training.TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=tx,
  )


# ----------------------------------------------------------------------------
# Train step: pure, jitted once, batch sharded over the data mesh.
# ----------------------------------------------------------------------------
def train_step(
    state: training.TrainState,
    images: jax.Array,
    labels: jax.Array,
    rng: jax.Array,
    *,
    head: str,
    augment_spec,
) -> tuple[training.TrainState, dict]:
  augment_key, dropout_key = jax.random.split(rng)
  inputs = augment_batch(augment_key, images, augment_spec)

  def loss_fn(params):
    (logits, _), updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        inputs,
        train=True,
        step=state.step,
        mutable=['batch_stats'],
        rngs={'dropout': dropout_key},
    )
    loss = dense_loss(logits, labels) if head == 'dc' else gap_loss(logits, labels)
    pooled_logits = logits.mean(axis=(1, 2)) if head == 'dc' else logits
    accuracy = jnp.mean(jnp.argmax(pooled_logits, -1) == labels)
    return loss, (updates['batch_stats'], accuracy)

  (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return state, {'loss': loss, 'accuracy': accuracy}


def train_augmentation(config) -> AugmentSpec:
  return augment_spec_for(config.dataset, train=True, **config.augment)


def embed_fn(state: training.TrainState, config):
  """Eval-mode encoder: uint8 images -> (pooled [B,C], feature_map [B,h,w,C]), each batch
  split over the data mesh, the outputs whole on every process (`training.data_parallel`)."""
  spec = augment_spec_for(config.dataset, train=False)
  mesh = training.data_mesh()
  variables = training.replicate({'params': state.params, 'batch_stats': state.batch_stats}, mesh)

  @jax.jit
  def embed(variables, images):
    inputs = augment.normalize(images, spec.mean, spec.std)
    _, out = state.apply_fn(variables, inputs, train=False)
    return out['pooled'], out['feature_map']

  return training.data_parallel(functools.partial(embed, variables), mesh, batch_argnums=(0,))


# ----------------------------------------------------------------------------
# Evaluation on novel classes: fixed seeded episodes, mean and 95% CI.
# ----------------------------------------------------------------------------
def evaluate_episodes(
    state,
    config,
    dataset,
    shots,
    num_episodes,
    seed,
    progress=None,
    per_episode: dict | None = None,
    transductive: bool = False,
) -> dict:
  """Summaries per setting; with `transductive`, also `config.eval.transductive`'s, paired.

  Fills `per_episode`, if given, with each setting's `(accuracies, episode-list identity)`.
  """
  per_episode = {} if per_episode is None else per_episode
  rules = inference_rules(config.eval)
  mode = rules.transductive if transductive else 'none'
  embed = embed_fn(state, config)
  maps, pooled = None, None
  if config.eval.scoring == 'dense':
    maps = embed_in_batches(lambda b: embed(b)[1], dataset.images, config.eval.embed_batch)
    pooled = maps.mean(axis=(1, 2))  # Every encoder's pooled feature is this mean.
  else:
    pooled = embed_in_batches(lambda b: embed(b)[0], dataset.images, config.eval.embed_batch)
  if mode == 'dense' and maps is None:
    maps = embed_in_batches(lambda b: embed(b)[1], dataset.images, config.eval.embed_batch)
  results = {}
  rule = dict(n_way=config.eval.n_way, batch_size=config.eval.batch_episodes, progress=progress)
  for k_shot in shots:
    episodes = make_episodes(
        dataset.labels, config.eval.n_way, k_shot, config.eval.n_query, num_episodes, seed
    )
    accuracies = episode_accuracies(
        pooled, episodes, maps=maps, scoring=config.eval.scoring, **rule
    )
    name = f'{config.eval.n_way}way_{k_shot}shot'
    results[name] = summarize(accuracies)
    per_episode[name] = (accuracies, episode_list_id(episodes, seed))
    if mode != 'none':  # Propagation on the same episodes, paired with the prototypes.
      other = episode_accuracies(
          pooled, episodes, maps=maps, transductive=mode, propagation=rules.propagation, **rule
      )
      results[name][f'transductive_{mode}'] = paired_difference(accuracies, other)
      per_episode[f'{name}_transductive_{mode}'] = (other, episode_list_id(episodes, seed))
  return results


@training.with_matmul_precision
def evaluate(
    config: ml_collections.ConfigDict, workdir: str, state=None, output_dir: str | None = None
) -> dict:
  """Evaluates the kept checkpoint of `workdir` on the novel classes; writes results.json
  and the per-episode accuracies to `output_dir` (default: the workdir)."""
  check_config(config)
  data = fewshot_data.load(config)
  fewshot_data.check_evaluation(config, data)
  output_dir = output_dir or workdir
  if state is None:
    model = build_model(config, data.num_base_classes)
    tx, _ = training.make_optimizer(config.optim, 1)
    template = create_state(config, model, data.base.images.shape[1:], tx)
    restored = training.Checkpointer(workdir, subdir='kept').restore(template)
    if restored is None:
      raise FileNotFoundError(
          f'no checkpoint in {os.path.join(workdir, "kept")}: train first with '
          f'`python launch/train.py --config=... --workdir={workdir}`.'
      )
    state = restored[0]
  print(f'Evaluating {config.eval.episodes} episodes per setting on {data.novel_name}...')
  per_episode = {}
  results = {
      'fewshot': evaluate_episodes(
          state,
          config,
          data.novel,
          config.eval.shots,
          config.eval.episodes,
          config.eval.seed,
          progress=print_progress,
          per_episode=per_episode,
          transductive=True,
      )
  }
  # Per-episode accuracies with the identity of their episode list, so two methods compare
  # paired (benchmarks/paired_comparison.py) only when they scored the same tasks.
  if training.is_main_process():  # Every process holds the same accuracies; one writes.
    save_episode_accuracies(os.path.join(output_dir, EPISODE_ACCURACIES_FILE), per_episode)
  rules, embed = inference_rules(config.eval), embed_fn(state, config)
  if data.lake_runs:
    results.update(
        lake_results(lambda b: embed(b)[0], lambda b: embed(b)[1], data.lake_runs, rules)
    )
  if rules.retrieval is not None:  # Every novel image a query against all the others.
    pooled = embed_in_batches(lambda b: embed(b)[0], data.novel.images, config.eval.embed_batch)
    results['retrieval'] = retrieval_report(
        pooled, data.novel.labels, seed=config.eval.seed, **rules.retrieval
    )
  results['precision'] = training.precision_record(config)
  if training.is_main_process():
    training.write_json(os.path.join(output_dir, 'results.json'), results)
  print_results(results)
  step = int(state.step)
  training.MetricLogger(output_dir, step).log_results(step, result_scalars(results), prefix='test')
  return results


# ----------------------------------------------------------------------------
# Training loop.
# ----------------------------------------------------------------------------
@training.with_matmul_precision
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict:
  check_config(config)
  # The workdir's lock, a write probe and its config.json's check, before any data is read.
  run = training.start_run(workdir, config, allow_config_change)
  data = fewshot_data.load(config)
  fewshot_data.check_evaluation(config, data)
  mesh = training.data_mesh()
  training.check_batch_size(config.batch_size, mesh)

  num_images = len(data.base.labels)
  steps_per_epoch = num_images // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f'config.batch_size={config.batch_size} exceeds the {num_images} base '
        'training images; lower it.'
    )
  total_steps = steps_per_epoch * config.optim.epochs
  model = build_model(config, data.num_base_classes)
  tx, schedule = training.make_optimizer(config.optim, steps_per_epoch)
  state = create_state(config, model, data.base.images.shape[1:], tx)

  checkpoints = training.Checkpointer(workdir, keep=config.checkpoint.keep)
  kept = training.Checkpointer(workdir, keep=1, subdir='kept')
  best_val = np.asarray(-1.0)
  restored = checkpoints.restore(state, {'best_val': best_val})
  if restored is not None:
    state, extra, _ = restored
    best_val = extra['best_val']
    print(f'Resumed from step {int(state.step)} in {checkpoints.directory}.')
  run.save_config(model_description(config, data.base))  # Every check has passed.
  state = training.replicate(state, mesh)

  step_fn = jax.jit(
      functools.partial(train_step, head=config.head, augment_spec=train_augmentation(config)),
      donate_argnums=(0,),
  )
  logger = training.MetricLogger(workdir, total_steps)
  arrays = (data.base.images, data.base.labels)
  if prefetch.keep_on_device(config.get('data_on_device', 'auto'), data.base.images.nbytes):
    arrays = training.replicate(arrays, mesh)  # Each batch is then gathered on the devices.
  place = functools.partial(training.shard_local_batch, mesh=mesh)
  start_epoch = int(state.step) // steps_per_epoch
  with training.StopRequest() as stop:
    for epoch in range(start_epoch, config.optim.epochs):
      # The epoch's order is a function of (seed, epoch): a resumed run replays it.
      order = np.asarray(
          jax.random.permutation(training.step_rng(config.seed, epoch, stream=1), num_images)
      )
      first = int(state.step) - epoch * steps_per_epoch
      index_batches = order[: steps_per_epoch * config.batch_size].reshape(steps_per_epoch, -1)
      # Every process draws the same global batches and reads only its rows of them.
      local = training.local_rows(index_batches[first:], mesh)
      batches = prefetch.gathered_batches(arrays, local, place)
      for i, batch in zip(range(first, steps_per_epoch), batches):
        step = epoch * steps_per_epoch + i
        state, metrics = step_fn(state, *batch, training.step_rng(config.seed, step))
        if (step + 1) % config.log_every_steps == 0 or step + 1 == total_steps:
          loss = float(metrics['loss'])
          training.check_finite(loss, step + 1, checkpoints.directory)
          logger.log(
              step + 1,
              {'loss': loss, 'accuracy': float(metrics['accuracy']), 'lr': float(schedule(step))},
          )
        if stop.requested:
          checkpoints.save(step + 1, state, {'best_val': best_val})
          stop.stop(step + 1, checkpoints.directory)

      last_epoch = epoch + 1 == config.optim.epochs
      if data.val is not None and ((epoch + 1) % config.validation.every_epochs == 0 or last_epoch):
        # The paper keeps the checkpoint with the best 5-way accuracy on validation classes.
        val = evaluate_episodes(
            state,
            config,
            data.val,
            (config.validation.shot,),
            config.validation.episodes,
            config.validation.seed,
        )
        setting, summary = next(iter(val.items()))
        val_acc = training.from_process_0(summary['accuracy'])  # Decides a collective save.
        logger.log_results(int(state.step), {f'{setting}_accuracy': val_acc}, prefix='val')
        if val_acc > float(best_val):
          best_val = np.asarray(val_acc)
          kept.save(int(state.step), state)
      elif data.val is None and last_epoch:
        kept.save(int(state.step), state)  # No validation classes: keep the last.
      if (epoch + 1) % config.checkpoint.every_epochs == 0 or last_epoch:
        checkpoints.save(int(state.step), state, {'best_val': best_val})
  logger.flush()
  restored = kept.restore(state)
  kept_state = restored[0] if restored else state
  results = evaluate(config, workdir, state=kept_state)
  embed = embed_fn(kept_state, config)
  figures.write_run_figures(config, workdir, embed, data.novel, int(kept_state.step))
  run.finish(int(state.step))
  return results
