"""Implanting (Lifchitz et al. 2019, Sec. 4): new filters beside a frozen network, per episode.

In chosen conv layers of the encoder's last block, `k` new filters (implants)
are added beside the original ones. An implant in layer l sees the original
and the implant channels of layer l-1; original filters see only original
channels, so the original features never change. Each implanted layer outputs
[original ‖ implant] channels. Per test episode, fresh implants (with their own
BatchNorm) are trained on the support images only, with the dense loss against
prototypes imprinted from the support's [original ‖ implant] features; then the
prototypes are re-imprinted and the queries classified.

Choices the paper leaves open, made here:
- ResNet-12's residual add: the implant channels of `conv2` add nothing. The
  block input carries original channels only (earlier blocks are not
  implanted), so an implant shortcut would be one more new layer outside the
  chosen ones; the implants form a plain conv path beside the residual block.
- Implanted layers must be a suffix of the block's convs (e.g. ('conv1',
  'conv2')): implants in a layer whose successor has none would feed nothing.
- Implant BatchNorm uses batch statistics while training on the support; its
  momentum is 0, so the stored statistics are exactly the support's, and after
  the last step one more support pass sets them for the final implants.
  Queries are then normalised with those statistics, never with statistics
  of the query set, so each query is classified on its own.
- Prototypes used as classifier weights during implant training are recomputed
  from the current support features at every step and held constant inside
  the step (stop_gradient), like imprinted weights.
- Only the implant subtree is differentiated and updated; the frozen variables
  are closed-over constants and the original BatchNorms always use their
  running statistics, so no masking optimizer is needed.
"""

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from fsl.dense_loss import dense_loss
from fsl.episodic_evaluation import EpisodesLike, Progress, episode_n_way, run_episode_batches
from fsl.prototypes import classify_by_prototypes, dense_scores, imprint_prototypes
from groundwork.encoders import Conv4, Conv4Block, ResNet12, ResNet12Block
from groundwork.encoders.layers import ModuleDef, activation_fn, encoder_outputs

Array = jax.Array
Variables = dict[str, Any]
IMPLANT_PREFIX = 'implant_'
# Convs of each encoder's last block that may receive implants, in forward order.
IMPLANTABLE_LAYERS = {'resnet12': ('conv0', 'conv1', 'conv2'), 'conv4': ('conv',)}
OPTIMIZERS = ('adam', 'sgd')
SCORINGS = ('pooled', 'dense')


def _implant_momentum(base_trainable: bool) -> float:
  # Momentum 0 for per-episode implants: the stored statistics are the last support pass's.
  return 0.9 if base_trainable else 0.0


class ImplantedResNet12Block(ResNet12Block):
  """ResNet12Block (its own layers, same names) plus `implant_conv{i}`/`implant_bn{i}`."""

  implant_layers: tuple[str, ...] = ()
  implant_width: int = 0
  base_trainable: bool = False

  @nn.compact
  def __call__(
      self,
      x: Array,
      train: bool,
      originals: tuple[Array, ...] | None = None,
      originals_only: bool = False,
  ):
    """The block's output; see `ImplantedEncoder.frozen_branch` for `originals`.

    `originals` = (input, output of layer 0, 1, 2) of the original channels,
    which never see the implants: given (from `originals_only=True`), only
    the implant channels are computed.
    """
    base_train = train and self.base_trainable
    if originals is None:
      originals = self.layer_outputs(x, base_train)
      if originals_only:
        return originals
    act = activation_fn(self.activation)
    implant = None
    for i in range(3):
      if f'conv{i}' in self.implant_layers:
        seen = (
            originals[i] if implant is None else jnp.concatenate([originals[i], implant], axis=-1)
        )
        z = self.make_conv(self.implant_width, 3, f'{IMPLANT_PREFIX}conv{i}')(seen)
        implant = act(
            self.make_norm(train, f'{IMPLANT_PREFIX}bn{i}', _implant_momentum(self.base_trainable))(
                z
            )
        )
    return self.finish(jnp.concatenate([originals[3], implant], axis=-1), base_train)


class ImplantedConv4Block(Conv4Block):
  """Conv4Block (its own `conv`, `bn`) plus `implant_conv`/`implant_bn` implants."""

  implant_layers: tuple[str, ...] = ()
  implant_width: int = 0
  base_trainable: bool = False

  @nn.compact
  def __call__(
      self,
      x: Array,
      train: bool,
      originals: tuple[Array, ...] | None = None,
      originals_only: bool = False,
  ):
    """As `ImplantedResNet12Block`; `originals` = (input, output of the original conv)."""
    if originals is None:
      originals = self.layer_outputs(x, train and self.base_trainable)
      if originals_only:
        return originals
    z = self.make_conv(self.implant_width, f'{IMPLANT_PREFIX}conv')(originals[0])
    implant = activation_fn(self.activation)(
        self.make_norm(train, f'{IMPLANT_PREFIX}bn', _implant_momentum(self.base_trainable))(z)
    )
    return self.finish(jnp.concatenate([originals[1], implant], axis=-1))


class ImplantedEncoder(nn.Module):
  """A ResNet-12 or Conv-4 encoder with implants in its last block (`block3`).

  `block0..block2` are the encoder's own blocks under the same names, so a
  trained encoder's variables plug in unchanged; `block3` adds the implant
  submodules (names starting with 'implant_'). Build it with `implanted_encoder`
  or `wide_control_encoder` rather than by hand.

  With `base_trainable=False` (implanting) every original BatchNorm uses its
  running statistics whatever `train` says, and `train` only switches the
  implant BatchNorms; with `base_trainable=True` (the DC+WIDE control) the
  whole network trains like an ordinary encoder.
  """

  arch: str  # a key of IMPLANTABLE_LAYERS
  widths: tuple[int, ...]  # the four block widths
  implant_layers: tuple[str, ...]
  implant_width: int
  activation: str
  drop_rate: float = 0.0  # DropBlock rate of blocks 2 and 3 (ResNet-12, trainable base only)
  dropblock_size: int = 5
  base_trainable: bool = False
  dtype: Any = jnp.float32
  pool_blocks: int = 4  # Conv-4 only: blocks that end in a max-pool.
  # The base encoder's layers (`_base_fields`), so implants run on the same platform kernels.
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  def setup(self):
    check_implant_layers(self.arch, self.implant_layers, self.implant_width)
    layers = dict(
        activation=self.activation, dtype=self.dtype, conv=self.conv, norm=self.norm, pool=self.pool
    )
    implants = dict(
        implant_layers=self.implant_layers,
        implant_width=self.implant_width,
        base_trainable=self.base_trainable,
    )
    if self.arch == 'resnet12':
      plain, implanted = ResNet12Block, ImplantedResNet12Block
      per_block = [
          dict(drop_rate=self.drop_rate if i >= 2 else 0.0, dropblock_size=self.dropblock_size)
          for i in range(4)
      ]
    else:
      plain, implanted = Conv4Block, ImplantedConv4Block
      per_block = [dict(downsample=i < self.pool_blocks) for i in range(4)]
    self.block0, self.block1, self.block2 = (
        plain(self.widths[i], **layers, **per_block[i]) for i in range(3)
    )
    self.block3 = implanted(self.widths[3], **layers, **per_block[3], **implants)

  def prefix(self, x: Array, train: bool = False) -> Array:
    """Output of block0..block2 (original channels only)."""
    train = train and self.base_trainable
    return self.block2(self.block1(self.block0(x, train), train), train)

  def last_block(self, h: Array, train: bool) -> tuple[Array, Array]:
    """`(feature_map [B,h,w,C+k], pooled [B,C+k])` from the prefix output `h`."""
    y = self.block3(h, train)
    return encoder_outputs(y)

  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    return self.last_block(self.prefix(x, train), train)

  def frozen_branch(self, x: Array) -> tuple[Array, ...]:
    """Everything the implants do not change: the original channels' activations
    in the last block (its input, then each layer's output), for `implant_branch`.

    Implanting trains only the implants, whose outputs the original filters never
    see, so this is computed once per episode instead of at every training step
    (the original filters are ~97% of the last block's work).
    """
    if self.base_trainable:
      raise ValueError(
          'frozen_branch needs a frozen base (base_trainable=False); the DC+WIDE '
          'control trains the original filters too.'
      )
    return self.block3(self.prefix(x), False, originals_only=True)

  def implant_branch(self, originals: tuple[Array, ...], train: bool) -> tuple[Array, Array]:
    """`last_block(prefix(x), train)` from `originals = frozen_branch(x)`."""
    y = self.block3(originals[0], train, originals=originals)
    return encoder_outputs(y)


def check_implant_layers(arch: str, layers: Sequence[str], width: int) -> None:
  """Raises ValueError unless `layers` is a non-empty suffix of the last block's convs."""
  if arch not in IMPLANTABLE_LAYERS:
    raise ValueError(f'Implanting supports encoders {sorted(IMPLANTABLE_LAYERS)}, not {arch!r}.')
  allowed = IMPLANTABLE_LAYERS[arch]
  for layer in layers:
    if layer not in allowed:
      raise ValueError(
          f'Implant layer {layer!r} does not exist in the last {arch} block; '
          f'choose among {list(allowed)}.'
      )
  suffixes = [allowed[i:] for i in range(len(allowed))]
  if tuple(layers) not in suffixes:
    raise ValueError(
        f'Implant layers {tuple(layers)} must be the last layers of the {arch} block '
        f'in order (each implant feeds the next), one of {suffixes}.'
    )
  if width < 1:
    raise ValueError(f'Implant width {width} must be at least 1 channel per layer.')


def _base_fields(base: nn.Module) -> dict:
  layers = dict(conv=base.conv, norm=base.norm, pool=base.pool)
  if isinstance(base, ResNet12):
    return dict(
        arch='resnet12',
        widths=tuple(base.widths),
        activation=base.activation,
        drop_rate=base.drop_rate if base.dropblock else 0.0,
        dropblock_size=base.dropblock_size,
        dtype=base.dtype,
        **layers,
    )
  if isinstance(base, Conv4):
    return dict(
        arch='conv4',
        widths=(base.width,) * 4,
        activation=base.activation,
        dtype=base.dtype,
        pool_blocks=base.pool_blocks,
        **layers,
    )
  raise ValueError(
      f'Implanting supports encoders {sorted(IMPLANTABLE_LAYERS)}; ' f'got {type(base).__name__}.'
  )


def implanted_encoder(base: nn.Module, layers: Sequence[str], width: int) -> ImplantedEncoder:
  """The frozen `base` encoder (ResNet12 or Conv4) with `width` implants in each of `layers`."""
  fields = _base_fields(base)
  fields['drop_rate'] = 0.0  # The base is frozen: no DropBlock while training implants.
  check_implant_layers(fields['arch'], layers, width)
  return ImplantedEncoder(implant_layers=tuple(layers), implant_width=width, **fields)


def wide_control_encoder(base: nn.Module, layers: Sequence[str], width: int) -> ImplantedEncoder:
  """DC+WIDE control: `base` widened by `width` channels in `layers`, trained from scratch.

  The encoders set one width per block, not per layer, so the control is the
  implanted architecture itself with every parameter trained jointly on the base
  classes: the same layers, channels and parameter count as DC+IMP, but nothing
  learned per episode. It has the ordinary encoder interface
  `(x, train) -> (feature_map, pooled)`.
  """
  fields = _base_fields(base)
  check_implant_layers(fields['arch'], layers, width)
  return ImplantedEncoder(
      implant_layers=tuple(layers), implant_width=width, base_trainable=True, **fields
  )


# ----------------------------------------------------------------- variables


def _is_implant(path: tuple[str, ...]) -> bool:
  return any(str(k).startswith(IMPLANT_PREFIX) for k in path)


def split_implants(variables: Variables) -> tuple[Variables, Variables]:
  """Splits variables into (original, implant) trees by the 'implant_' module names."""
  flat = traverse_util.flatten_dict(variables)
  original = {k: v for k, v in flat.items() if not _is_implant(k)}
  implants = {k: v for k, v in flat.items() if _is_implant(k)}
  return traverse_util.unflatten_dict(original), traverse_util.unflatten_dict(implants)


def merge_implants(original: Variables, implants: Variables) -> Variables:
  """Inverse of `split_implants`."""
  flat = traverse_util.flatten_dict(original)
  flat.update(traverse_util.flatten_dict(implants))
  return traverse_util.unflatten_dict(flat)


def init_implants(model: ImplantedEncoder, key: Array, sample_x: Array) -> Variables:
  """Fresh implant variables `{'params', 'batch_stats'}` (under jit the unused
  original parameters that `init` also draws are never computed)."""
  return split_implants(model.init({'params': key}, sample_x, train=False))[1]


# ------------------------------------------------------ per-episode training


@dataclasses.dataclass(frozen=True)
class ImplantConfig:
  """How implants are trained on one episode's support set.

  scale: cosine-classifier scale of the dense loss; use the trained base
    classifier's learned scale.
  scoring: 'pooled' (the paper's rule) or 'dense' for the final query scores.
  unroll: unroll the `steps` training steps in the compiled program instead of
    looping; the same numbers, compiled differently. Set it from
    `groundwork.backend.unroll_short_loops()`: XLA's CPU backend runs these
    convolutions far slower inside a loop (docs/performance.md); accelerators
    keep the loop, which compiles faster.
  """

  steps: int = 50
  learning_rate: float = 1e-3
  optimizer: str = 'adam'  # one of OPTIMIZERS; 'sgd' uses momentum 0.9
  scale: float = 10.0
  scoring: str = 'pooled'
  unroll: bool = False

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'implant optimizer={self.optimizer!r} is not one of {list(OPTIMIZERS)}.')
    if self.scoring not in SCORINGS:
      raise ValueError(f'implant scoring={self.scoring!r} is not one of {list(SCORINGS)}.')
    if self.steps < 1 or self.learning_rate <= 0:
      raise ValueError(
          f'implant steps={self.steps} must be >= 1 and ' f'learning_rate={self.learning_rate} > 0.'
      )


def _optimizer(config: ImplantConfig) -> optax.GradientTransformation:
  if config.optimizer == 'adam':
    return optax.adam(config.learning_rate)
  return optax.sgd(config.learning_rate, momentum=0.9)


AugmentFn = Callable[[Array, Array], Array]


def train_implants(
    model: ImplantedEncoder,
    frozen: Variables,
    support_x: Array,
    support_labels: Array,
    key: Array,
    config: ImplantConfig,
    n_way: int,
    augment_fn: AugmentFn | None = None,
) -> tuple[Variables, Array]:
  """Fresh implants trained on one support set; returns (all variables, loss per step).

  Args:
    model: from `implanted_encoder`.
    frozen: the trained base encoder's `{'params', 'batch_stats'}`.
    support_x: support images `[S, H, W, C]` as the encoder takes them.
    support_labels: `[S]` in 0..n_way-1.
    key: the episode's key `k`; implants are `init_implants(model,
      split(k)[0], ...)` and augmentation draws from `split(k)[1]` folded with
      the step.
    augment_fn: optional `(key, x) -> x` applied to the support at each step.

  The returned variables hold `frozen` unchanged plus the trained implants.
  """
  init_key, augment_key = jax.random.split(key)
  implants = init_implants(model, init_key, support_x[:1])
  tx = _optimizer(config)

  def frozen_branch(x):
    return model.apply(frozen, x, method=ImplantedEncoder.frozen_branch)

  def loss_fn(params, stats, originals):
    variables = merge_implants(frozen, {'params': params, 'batch_stats': stats})
    (fmap, pooled), updated = model.apply(
        variables, originals, True, method=ImplantedEncoder.implant_branch, mutable=['batch_stats']
    )
    prototypes = jax.lax.stop_gradient(imprint_prototypes(pooled, support_labels, n_way))
    logits = config.scale * classify_by_prototypes(fmap, prototypes)
    return dense_loss(logits, support_labels), split_implants(updated)[1]['batch_stats']

  # Without augmentation the frozen branch of the support is the same at every step.
  fixed = frozen_branch(support_x) if augment_fn is None else None

  def step(carry, i):
    params, stats, opt_state = carry
    originals = (
        fixed
        if augment_fn is None
        else frozen_branch(augment_fn(jax.random.fold_in(augment_key, i), support_x))
    )
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, originals)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), loss

  carry = (implants['params'], implants['batch_stats'], tx.init(implants['params']))
  (params, stats, _), losses = jax.lax.scan(
      step, carry, jnp.arange(config.steps), unroll=config.unroll
  )
  # Support statistics of the final implants, used for support and queries alike.
  _, stats = loss_fn(params, stats, frozen_branch(support_x) if fixed is None else fixed)
  return merge_implants(frozen, {'params': params, 'batch_stats': stats}), losses


def implant_episode(
    model: ImplantedEncoder,
    frozen: Variables,
    support_x: Array,
    support_labels: Array,
    query_x: Array,
    key: Array,
    config: ImplantConfig,
    n_way: int,
    augment_fn: AugmentFn | None = None,
) -> Array:
  """Query scores `[Q, n_way]` after training implants on the support (see `train_implants`)."""
  variables, _ = train_implants(
      model, frozen, support_x, support_labels, key, config, n_way, augment_fn
  )
  _, support_pooled = model.apply(variables, support_x, False)
  query_map, query_pooled = model.apply(variables, query_x, False)
  prototypes = imprint_prototypes(support_pooled, support_labels, n_way)
  if config.scoring == 'dense':
    return dense_scores(query_map, prototypes)
  return classify_by_prototypes(query_pooled, prototypes)


def implant_batch_fn(
    model: ImplantedEncoder,
    frozen: Variables,
    images: Array,
    key: Array,
    config: ImplantConfig,
    n_way: int,
    *,
    input_fn: Callable[[Array], Array] | None = None,
    augment_fn: AugmentFn | None = None,
) -> Callable[..., Array]:
  """One jitted, vmapped function for batches of episodes with implants.

  It maps `(support_idx, query_idx, support_labels, query_labels, episode_ids)`, each with
  a leading batch axis, to the query accuracies `[batch]`; episode `e` trains its implants
  with `fold_in(key, e)`, so an episode's accuracy depends neither on the batch it is in
  nor on where a resumed run starts. Arguments as in `implant_episode_accuracies`.
  """
  images = jnp.asarray(images)
  input_fn = input_fn or (lambda x: x)

  def one_episode(frozen, images, s_idx, q_idx, s_lab, q_lab, episode_id):
    scores = implant_episode(
        model,
        frozen,
        input_fn(images[s_idx]),
        s_lab,
        input_fn(images[q_idx]),
        jax.random.fold_in(key, episode_id),
        config,
        n_way,
        augment_fn,
    )
    return jnp.mean(jnp.argmax(scores, axis=-1) == q_lab)

  # Variables and images are arguments, not closed-over constants, so XLA never embeds them.
  batch = jax.jit(jax.vmap(one_episode, in_axes=(None, None, 0, 0, 0, 0, 0)))
  return lambda *episode_arrays: batch(frozen, images, *episode_arrays)


def implant_episode_accuracies(
    model: ImplantedEncoder,
    frozen: Variables,
    images: Array,
    episodes: EpisodesLike,
    key: Array,
    config: ImplantConfig,
    *,
    input_fn: Callable[[Array], Array] | None = None,
    augment_fn: AugmentFn | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> np.ndarray:
  """Per-episode query accuracies `[E]` with implants, `batch_size` episodes per vmapped call.

  Args:
    images: the evaluation dataset `[N, H, W, C]` (e.g. uint8) the episodes index into.
    key: evaluation key; episode `e` uses `fold_in(key, e)`, so results do not
      depend on `batch_size`.
    input_fn: maps gathered images to encoder input (e.g. normalisation), inside jit.
  """
  batch = implant_batch_fn(
      model,
      frozen,
      images,
      key,
      config,
      episode_n_way(episodes),
      input_fn=input_fn,
      augment_fn=augment_fn,
  )
  return run_episode_batches(batch, episodes, batch_size, progress)
