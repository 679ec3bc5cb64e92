"""Mean Teacher (Tarvainen & Valpola, NIPS 2017): EMA teacher, ramps and consistency costs.

Matches CuriousAI/mean-teacher `pytorch/` (`main.py`, `mean_teacher/ramps.py`,
`mean_teacher/losses.py`), which LP-DeepSSL reuses:

- the teacher's parameters are an exponential moving average of the student's,
  with decay min(1 - 1/(step + 1), ema_decay) so early on it is the true mean;
  only parameters are averaged: the teacher keeps its own batch-norm statistics
  from its own train-mode passes (the reference averages `parameters()`, not
  buffers);
- the consistency cost is the squared difference of the two softmaxes, weighted
  by c * exp(-5 (1 - e/5)^2) during the first 5 epochs;
- a second student head is tied to the first by a "logit distance" cost;
- the learning rate ramps up linearly, then follows a cosine to 0 at
  `rampdown_epochs` (training stops earlier, at 180 of 210 epochs).

The reference losses return sums over the batch (divided by the number of
classes) that its training loop divides by the minibatch size, labeled and
unlabeled images together; the functions here return that quotient directly:
a mean over batch and classes.
"""

import jax
import jax.numpy as jnp
import numpy as np


def ema_update(teacher_params, student_params, step, ema_decay: float):
  """`decay * teacher + (1 - decay) * student`, decay = min(1 - 1/(step + 1), ema_decay).

  `step` counts the optimizer updates applied so far, including the one just
  made (the reference increments `global_step` before averaging): the first
  update (step 1) averages teacher and student equally, and step 0 would copy
  the student.
  """
  step = jnp.asarray(step, jnp.float32)
  decay = jnp.minimum(1.0 - 1.0 / (step + 1.0), ema_decay)
  return jax.tree_util.tree_map(
      lambda t, s: decay * t + (1.0 - decay) * s, teacher_params, student_params
  )


def sigmoid_rampup(current, rampup_length: float):
  """exp(-5 (1 - t)^2) with t = current / rampup_length clipped to [0, 1]; 1 if the length is 0."""
  if rampup_length == 0:
    return jnp.float32(1.0)
  t = jnp.clip(jnp.asarray(current, jnp.float32), 0.0, rampup_length) / rampup_length
  return jnp.exp(-5.0 * jnp.square(1.0 - t))


def consistency_weight(epoch, max_weight: float, rampup_epochs: float = 5):
  """`max_weight * sigmoid_rampup(epoch, rampup_epochs)`.

  Both reference codes pass the integer epoch (constant within an epoch), so
  with max_weight = 100: 0.67, 4.08, 16.5, 44.9, 81.9 for epochs 0-4, then 100.
  """
  return max_weight * sigmoid_rampup(epoch, rampup_epochs)


def softmax_mse(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Mean over batch and classes of (softmax(student) - softmax(teacher))^2.

  The reference's `softmax_mse_loss` (sum / num_classes) divided by the
  minibatch size. No gradient flows into the teacher.
  """
  student = jax.nn.softmax(student_logits.astype(jnp.float32), axis=-1)
  teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.square(student - teacher))


def logit_distance(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
  """Mean over batch and classes of (a - b)^2, gradients into both heads.

  The reference's `symmetric_mse_loss` (sum / num_classes) divided by the
  minibatch size; the training loop multiplies it by `logit_distance_cost` (0.01).
  """
  return jnp.mean(jnp.square(logits_a.astype(jnp.float32) - logits_b.astype(jnp.float32)))


def linear_rampup(current, rampup_length: float):
  """current / rampup_length, capped at 1; 1 if the length is 0."""
  if rampup_length == 0:
    return jnp.float32(1.0)
  return jnp.minimum(jnp.asarray(current, jnp.float32) / rampup_length, 1.0)


def cosine_rampdown(current, rampdown_length: float):
  """0.5 (cos(pi current / rampdown_length) + 1): 1 at 0, 0 at rampdown_length."""
  return 0.5 * (jnp.cos(np.pi * jnp.asarray(current, jnp.float32) / rampdown_length) + 1.0)


def mean_teacher_lr(
    epoch,
    base_lr: float,
    initial_lr: float = 0.0,
    rampup_epochs: float = 0,
    rampdown_epochs: float = 210,
):
  """The reference's `adjust_learning_rate`, set every iteration.

  `epoch` is fractional (epoch + step_in_epoch / steps_per_epoch): linear ramp
  from `initial_lr` to `base_lr` over `rampup_epochs`, times a cosine that
  reaches 0 at `rampdown_epochs` (0 turns the cosine off). The reference asserts
  0 <= epoch <= rampdown_epochs; a Python number outside raises here, a traced
  one is clipped.
  """
  if rampdown_epochs and isinstance(epoch, (int, float)) and not 0 <= epoch <= rampdown_epochs:
    raise ValueError(
        f'epoch={epoch} is outside [0, rampdown_epochs={rampdown_epochs}]; the cosine '
        'would rise again. Train for at most rampdown_epochs epochs.'
    )
  if isinstance(epoch, (int, float)) and epoch < 0:
    raise ValueError(f'epoch={epoch} must be >= 0.')
  epoch = jnp.maximum(jnp.asarray(epoch, jnp.float32), 0.0)
  lr = linear_rampup(epoch, rampup_epochs) * (base_lr - initial_lr) + initial_lr
  if rampdown_epochs:
    lr = lr * cosine_rampdown(jnp.minimum(epoch, rampdown_epochs), rampdown_epochs)
  return lr


def mean_teacher_schedule(optim, steps_per_epoch: int, stage_epochs: int):
  """`mean_teacher_lr` per iteration of a stage from `config.optim`, its cosine reaching 0
  after `optim.rampdown_ratio * stage_epochs` epochs (210 for 180: training stops above 0)."""
  return lambda step: mean_teacher_lr(
      step / steps_per_epoch,
      optim.lr,
      optim.initial_lr,
      optim.rampup_epochs,
      optim.rampdown_ratio * stage_epochs,
  )
