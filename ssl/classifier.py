"""The semi-supervised network and its state: encoder, two heads, an EMA teacher.

The student maps images to ((class_logits, consistency_logits), pooled_features). As
LP-DeepSSL's `mean_teacher/architectures.py`:

- `normalize_features` L2-normalises the pooled feature before both heads (its `--isL2`),
  so the heads, and label propagation's graph, see unit vectors;
- the heads are built by type: 'weight_norm' (`weight_norm(nn.Linear)`, both heads of its
  CNN-13, the second of its ResNet-18), 'linear' (`nn.Linear` with PyTorch's default init,
  the first head of its ResNet-18), or 'flax_dense' (flax's `nn.Dense`: LeCun-normal kernel,
  zero bias; what this project's Fashion-MNIST and digits figures were measured with).

The teacher is a second set of parameters with its own BatchNorm statistics. Both references
build it as a second model with its own random initialisation (`create_model(ema=True)`);
`teacher_init='student'` starts it as a copy of the student instead.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from groundwork import training
from groundwork.data import augment, augment_batch, augment_spec_for
from groundwork.encoders import WeightNormDense, build_encoder
from groundwork.encoders.layers import torch_default_kernel_init
from groundwork.evaluation import map_in_batches, retrieval
from semisup.mean_teacher import mean_teacher_schedule

HEAD_TYPES = ('linear', 'weight_norm', 'flax_dense')
TEACHER_INITS = ('random', 'student')
FEATURE_SOURCES = ('augmented', 'clean')
# `training.step_rng` streams, so that these keys never equal a train step's key.
TEACHER_INIT_STREAM = 1
FEATURE_AUGMENT_STREAM = 2


def _torch_bias_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's `nn.Linear` bias."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def make_head(kind: str, num_classes: int, fan_in: int, name: str) -> nn.Module:
  if kind == 'weight_norm':
    return WeightNormDense(num_classes, name=name)
  if kind == 'linear':
    return nn.Dense(
        num_classes,
        kernel_init=torch_default_kernel_init,
        bias_init=_torch_bias_init(fan_in),
        name=name,
    )
  if kind == 'flax_dense':
    return nn.Dense(num_classes, name=name)
  raise ValueError(f'head type {kind!r} is not one of {list(HEAD_TYPES)}.')


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, 1e-12) per row, torch's `F.normalize`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


class Classifier(nn.Module):
  """Encoder, optional L2 normalisation, a class head and (Mean Teacher) a consistency head."""

  encoder: nn.Module
  num_classes: int
  class_head: str = 'weight_norm'
  consistency_head: str = 'weight_norm'
  normalize_features: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    _, pooled = self.encoder(x, train=train)
    if self.normalize_features:
      pooled = l2_normalize(pooled)
    fan_in = pooled.shape[-1]
    return (
        make_head(self.class_head, self.num_classes, fan_in, 'head')(pooled),
        make_head(self.consistency_head, self.num_classes, fan_in, 'consistency_head')(pooled),
    ), pooled


class SemiSupervisedState(training.TrainState):
  """TrainState plus the Mean Teacher's parameters and its own BN statistics."""

  teacher_params: Any = None
  teacher_batch_stats: Any = None


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> Classifier:
  encoder = build_encoder(
      config.encoder, dtype=training.compute_dtype(config), **config.encoder_kwargs.to_dict()
  )
  return Classifier(
      encoder,
      num_classes,
      class_head=config.heads.classifier,
      consistency_head=config.heads.consistency,
      normalize_features=config.normalize_features,
  )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(model: Classifier, image_shape: tuple, key: jax.Array):
  return model.init({'params': key, 'dropout': key}, jnp.zeros((1, *image_shape)), train=False)


def init_variables(model: Classifier, image_shape, key: jax.Array) -> tuple[Any, Any]:
  """(params, batch_stats) of a fresh initialisation from `key`."""
  variables = _init(model, tuple(image_shape), key)
  return variables['params'], variables.get('batch_stats', {})


def new_teacher(config, model, image_shape, state, stage_start: int) -> tuple[Any, Any]:
  """A teacher started at step `stage_start`: a copy of the student's parameters and
  statistics ('student'), or an initialisation of its own ('random'), drawn from the config
  seed and the step, so a resumed run draws the same one."""
  if config.mt.teacher_init == 'student':
    # Own buffers: the step donates student and teacher alike.
    return jax.tree.map(jnp.copy, state.params), jax.tree.map(jnp.copy, state.batch_stats)
  key = training.step_rng(config.seed, stage_start, stream=TEACHER_INIT_STREAM)
  return init_variables(model, image_shape, key)


def create_state(config, num_classes: int, image_shape) -> SemiSupervisedState:
  model = build_model(config, num_classes)
  params, stats = init_variables(model, image_shape, training.seed_key(config.seed))
  tx, _ = training.make_optimizer(
      config.optim, 1, schedule=mean_teacher_schedule(config.optim, 1, 1)
  )
  state = SemiSupervisedState.create(apply_fn=model.apply, params=params, batch_stats=stats, tx=tx)
  teacher_params, teacher_stats = new_teacher(config, model, image_shape, state, 0)
  return state.replace(teacher_params=teacher_params, teacher_batch_stats=teacher_stats)


# ----------------------------------------------------------------------------
# Eval-mode functions: test error and the features that label propagation reads.
# ----------------------------------------------------------------------------
class ApplyFns(NamedTuple):
  """Jitted eval-mode functions returning (class logits, pooled features)."""

  student: Any  # (state, images)
  teacher: Any  # (state, images)
  student_augmented: Any  # (state, images, key): on training-augmented images.


def make_apply_fns(config) -> ApplyFns:
  eval_spec = augment_spec_for(config.dataset, train=False)
  train_spec = augment_spec_for(config.dataset, train=True, **config.augment)

  def run(params, stats, apply_fn, x):
    (logits, _), pooled = apply_fn({'params': params, 'batch_stats': stats}, x, train=False)
    return logits, pooled

  def clean(images):
    return augment.normalize(images, eval_spec.mean, eval_spec.std)

  return ApplyFns(
      student=jax.jit(lambda s, b: run(s.params, s.batch_stats, s.apply_fn, clean(b))),
      teacher=jax.jit(
          lambda s, b: run(s.teacher_params, s.teacher_batch_stats, s.apply_fn, clean(b))
      ),
      student_augmented=jax.jit(
          lambda s, b, key: run(
              s.params, s.batch_stats, s.apply_fn, augment_batch(key, b, train_spec)
          )
      ),
  )


def error_rate(state, fn, dataset, batch_size) -> float:
  """Fraction of `dataset` that `fn` (an ApplyFns member) misclassifies."""
  logits, _ = map_in_batches(lambda b: fn(state, b), dataset.images, batch_size)
  return float(np.mean(np.argmax(logits, -1) != dataset.labels))


def retrieval_settings(config) -> dict:
  """config.eval_retrieval as `retrieval_report`'s keyword arguments."""
  skip = ('enabled', 'max_images')
  return {k: v for k, v in config.eval_retrieval.to_dict().items() if k not in skip}


def test_retrieval(config, state, fn, dataset) -> dict:
  """Retrieval metrics of `fn`'s pooled features, each image a query against all others
  (the first `eval_retrieval.max_images` of `dataset`, if that is above 0)."""
  count = config.eval_retrieval.max_images or len(dataset.labels)
  images, labels = dataset.images[:count], dataset.labels[:count]
  _, features = map_in_batches(lambda b: fn(state, b), images, config.eval_batch_size)
  return retrieval.retrieval_report(
      features, labels, seed=config.seed, **retrieval_settings(config)
  )


def embed_on_device(fn, images: np.ndarray, batch_size: int) -> jax.Array:
  """`fn(chunk, start)` over `images` in batches, outputs concatenated on the device
  (map_in_batches copies each batch's output to the host). The last batch is padded with
  copies of its first image, so a jitted `fn` compiles once."""
  size = min(batch_size, len(images))
  parts = []
  for start in range(0, len(images), size):
    chunk = images[start : start + size]
    real = len(chunk)
    if real < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - real, axis=0)])
    parts.append(fn(chunk, start)[:real])
  return jnp.concatenate(parts)


def propagation_features(state, config, fns: ApplyFns, images, step: int) -> jax.Array:
  """The student's eval-mode pooled features of every training image, the graph's input.

  'augmented': of training-augmented images, as LP-DeepSSL's `extract_features`, which reads
  the training set through its training transform (the first view when Mean Teacher is on);
  each batch's key comes from the config seed, the step and the batch's first index.
  'clean': of the images as the test set is read.
  """
  if config.lp.features_from == 'augmented':
    key = training.step_rng(config.seed, step, stream=FEATURE_AUGMENT_STREAM)
    embed = lambda chunk, start: fns.student_augmented(state, chunk, jax.random.fold_in(key, start))
  else:
    embed = lambda chunk, start: fns.student(state, chunk)
  return embed_on_device(lambda c, s: embed(c, s)[1], images, config.eval_batch_size)
