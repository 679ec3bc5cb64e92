"""DropBlock as RFS / MetaOptNet use it, checked against numbers derived by hand.

The reference (WangYueFt/rfs models/resnet.py, kjunelee/MetaOptNet models/dropblock.py):
after the max-pool of ResNet-12's blocks 3 and 4 (our block2, block3), with keep rate
k = max(1 - p * t / 40,000, 1 - p) at the block's t-th forward pass (t = 1 first), seeds
are Bernoulli(gamma) on the (H - s + 1) x (W - s + 1) positions where a whole s x s block
fits, gamma = (1 - k) / s**2 * H**2 / (H - s + 1)**2, each seed zeroes the block to its
lower right, and the kept units are multiplied by (units) / (units kept). Blocks 1 and 2
apply plain dropout at p instead.

Expected fraction dropped, by hand: a unit in row r lies in the blocks of the seed rows
max(0, r - s + 1) .. min(r, H - s), n_r of them (columns alike, n_c), so it survives with
probability (1 - gamma) ** (n_r * n_c) and the expected dropped fraction is
1 - mean over units of (1 - gamma) ** (n_r * n_c).

Empirical fractions are means over B x C independent maps, each map's fraction lying in
[0, 1]; its variance is at most mu (1 - mu) (the Bernoulli case), so the tolerance is five
of those standard errors.
"""

import functools
import math
import sys
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl import train as fsl_train
from groundwork import training
from groundwork.data import AugmentSpec
from groundwork.encoders import ResNet12Block, ResNet12Tiny, ResNet12Wide, takes_step
from groundwork.encoders.layers import (
    DropBlock,
    drop_block,
    dropblock_gamma,
    warmed_up_drop_rate,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RATE = 0.1  # RFS and MetaOptNet's drop_rate.
WARMUP = 40_000  # Their 20 * 2000.


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


def _tolerance(mu: float, maps: int) -> float:
  return 5 * math.sqrt(mu * (1 - mu) / maps)


# ---------------------------------------------------------------- gamma and mask statistics

# (map side H, block s, gamma, expected dropped fraction), each derived in the comment above
# it. The maps are those of ResNet-12's last two blocks: 84x84 inputs give 10x10 and 5x5
# (block 5, miniImageNet), 32x32 inputs 4x4 and 2x2 (block 2, CIFAR-FS / FC100).
HAND = [
    # gamma = 0.1 / 25 * 100 / 36 = 1/90. Rows are covered n = 1, 2, 3, 4, 5, 5, 4, 3, 2, 1
    # times, each value of n twice, so the dropped fraction is
    # 1 - (4 / 100) * sum_{a, c = 1..5} (89/90) ** (a c) = 0.0934537.
    (10, 5, 1 / 90, 0.0934537016),
    # One seed position: gamma = 0.1 / 25 * 25 / 1 = 0.1 drops the whole map, fraction 0.1.
    (5, 5, 0.1, 0.1),
    # gamma = 0.1 / 4 * 16 / 9 = 2/45; n = 1, 2, 2, 1: 4 units with n_r n_c = 1, 8 with 2,
    # 4 with 4, so 1 - (4 (43/45) + 8 (43/45)**2 + 4 (43/45)**4) / 16 = 0.0961362.
    (4, 2, 2 / 45, 0.0961361988),
    # One seed position again: gamma = 0.1 / 4 * 4 / 1 = 0.1, fraction 0.1.
    (2, 2, 0.1, 0.1),
]


@pytest.mark.parametrize("side, block, gamma, dropped", HAND)
def test_gamma_is_the_reference_formula(side, block, gamma, dropped):
  del dropped
  assert dropblock_gamma(RATE, block, side, side) == pytest.approx(gamma, rel=1e-12)


@pytest.mark.parametrize("side, block, gamma, dropped", HAND)
def test_hand_fraction_is_the_coverage_formula(side, block, gamma, dropped):
  cover = [min(r, side - block) - max(r - block + 1, 0) + 1 for r in range(side)]
  survive = np.mean((1 - gamma) ** np.outer(cover, cover))
  assert 1 - survive == pytest.approx(dropped, abs=1e-9)


@pytest.mark.parametrize("side, block, gamma, dropped", HAND)
def test_dropped_fraction_and_rescaling_match_the_hand_numbers(side, block, gamma, dropped):
  del gamma
  batch, channels = 512, 64
  y = np.asarray(drop_block(_key(side), jnp.ones((batch, side, side, channels)), RATE, block))
  zero = y == 0
  per_map = zero.mean(axis=(1, 2))  # [batch, channels], independent maps
  assert abs(per_map.mean() - dropped) <= _tolerance(dropped, batch * channels)
  # Kept units carry (units) / (units kept), so a tensor of ones keeps its mean, 1.
  np.testing.assert_allclose(y[~zero], y.size / (~zero).sum(), rtol=1e-6)
  assert y.mean() == pytest.approx(1.0, rel=1e-5)


def test_blocks_are_whole_squares_anchored_at_their_seed():
  # 10x10 map, block 5: a map with any drop is a union of 5x5 squares, so every zero
  # lies in a 5x5 all-zero window that fits in the map.
  y = np.asarray(drop_block(_key(1), jnp.ones((64, 10, 10, 8)), RATE, 5))
  zero = (y == 0).transpose(0, 3, 1, 2).reshape(-1, 10, 10)
  for m in zero[zero.any(axis=(1, 2))][:50]:
    windows = np.zeros_like(m)
    for i in range(6):
      for j in range(6):
        if m[i : i + 5, j : j + 5].all():
          windows[i : i + 5, j : j + 5] = True
    np.testing.assert_array_equal(windows, m)


# ---------------------------------------------------------------- keep-rate warm-up


@pytest.mark.parametrize(
    "step, keep",
    [
        (0, 1 - 0.1 / 40_000),  # t = 1: 0.9999975
        (19_999, 0.95),  # t = 20,000: halfway
        (39_999, 0.9),  # t = 40,000: the full rate from here on
        (40_000, 0.9),
        (1_000_000, 0.9),
    ],
)
def test_keep_rate_follows_the_reference_ramp(step, keep):
  rate = warmed_up_drop_rate(RATE, WARMUP, jnp.asarray(step))
  assert 1 - float(rate) == pytest.approx(keep, abs=1e-7)


def test_no_warmup_is_the_plain_rate_and_a_negative_one_is_refused():
  assert warmed_up_drop_rate(RATE, 0, 123) == RATE
  with pytest.raises(ValueError, match="warmup_steps"):
    warmed_up_drop_rate(RATE, -1, 0)


def test_layer_mid_warmup_draws_the_mask_of_the_ramped_rate():
  # Step 19,999 of 40,000: rate 0.05, so gamma on a 10x10 map is 0.05 / 25 * 100 / 36 = 1/180.
  x = jnp.ones((256, 10, 10, 32))
  rngs = {"dropout": _key(2)}
  ramped = DropBlock(RATE, 5, WARMUP).apply({}, x, False, step=19_999, rngs=rngs)
  plain = DropBlock(0.05, 5).apply({}, x, False, rngs=rngs)
  np.testing.assert_array_equal(ramped, plain)
  full = DropBlock(RATE, 5, WARMUP).apply({}, x, False, step=10**6, rngs=rngs)
  np.testing.assert_array_equal(full, DropBlock(RATE, 5).apply({}, x, False, rngs=rngs))
  # Half the rate drops about half as much: 1 - (4 / 100) sum_{a, c = 1..5} (179/180) ** (a c)
  # = 0.0483185.
  cover = np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1])
  expected = 1 - np.mean((1 - 1 / 180) ** np.outer(cover, cover))
  assert expected == pytest.approx(0.0483185, abs=1e-7)
  per_map = (np.asarray(ramped) == 0).mean(axis=(1, 2))
  assert abs(per_map.mean() - expected) <= _tolerance(expected, per_map.size)


def test_warmup_without_a_step_is_refused_in_training_only():
  x = jnp.ones((2, 6, 6, 4))
  layer = DropBlock(RATE, 3, WARMUP)
  np.testing.assert_array_equal(layer.apply({}, x, True), x)  # eval: identity, no step
  with pytest.raises(ValueError, match="step"):
    layer.apply({}, x, False, rngs={"dropout": _key(3)})


# ---------------------------------------------------------------- ResNet-12 with the recipe

RFS_TINY = functools.partial(
    ResNet12Tiny,
    dropblock=True,
    drop_rate=RATE,
    dropblock_size=2,
    dropblock_warmup_steps=WARMUP,
    early_dropout=True,
)


def _regularisers(model, x, step):
  """{block: type name} of the dropout and active DropBlock layers a train call runs."""

  def active(module, _):
    rate = getattr(module, "drop_rate", getattr(module, "rate", 0.0))
    return type(module).__name__ in ("Dropout", "DropBlock") and rate > 0

  variables = model.init({"params": _key(0), "dropout": _key(0)}, x, False)
  _, state = model.apply(
      variables,
      x,
      True,
      step=step,
      rngs={"dropout": _key(1)},
      mutable=["batch_stats", "intermediates"],
      capture_intermediates=active,
  )
  return {b: sorted(layers) for b, layers in state.get("intermediates", {}).items()}


def test_dropout_in_blocks_0_1_and_dropblock_in_blocks_2_3():
  x = jnp.ones((2, 32, 32, 3))
  assert _regularisers(RFS_TINY(), x, 0) == {
      "block0": ["Dropout_0"],
      "block1": ["Dropout_0"],
      "block2": ["DropBlock_0"],
      "block3": ["DropBlock_0"],
  }
  assert _regularisers(ResNet12Tiny(), x, 0) == {}


def test_early_dropout_zeroes_the_rate_and_rescales_the_rest():
  x = jax.random.normal(_key(4), (16, 32, 32, 3))
  plain, dropped = ResNet12Block(8), ResNet12Block(8, dropout_rate=RATE)
  variables = plain.init(_key(5), x, False)

  def run(block):
    out, _ = block.apply(variables, x, True, rngs={"dropout": _key(6)}, mutable=["batch_stats"])
    return np.asarray(out)

  y, z = run(plain), run(dropped)
  assert np.all(y != 0)
  zero = z == 0
  # Units are dropped independently: the zero count is Binomial(units, 0.1).
  assert abs(zero.mean() - RATE) <= _tolerance(RATE, zero.size)
  np.testing.assert_allclose(z[~zero], y[~zero] / (1 - RATE), rtol=1e-6)


def test_eval_mode_is_the_plain_network():
  x = jax.random.normal(_key(7), (4, 32, 32, 3))
  variables = ResNet12Tiny().init(_key(8), x, False)
  plain = ResNet12Tiny().apply(variables, x, False)
  rfs = RFS_TINY().apply(variables, x, False)
  for a, b in zip(plain, rfs):
    np.testing.assert_array_equal(a, b)


def test_without_warmup_the_step_changes_nothing():
  x = jax.random.normal(_key(9), (4, 32, 32, 3))
  model = ResNet12Tiny(dropblock=True, drop_rate=0.3, dropblock_size=2)
  variables = model.init(_key(10), x, False)

  def run(**step):
    (fmap, _), _ = model.apply(
        variables, x, True, rngs={"dropout": _key(11)}, mutable=["batch_stats"], **step
    )
    return np.asarray(fmap)

  np.testing.assert_array_equal(run(), run(step=jnp.asarray(123)))


def test_resnet12_refuses_out_of_range_fields():
  x = jnp.ones((1, 32, 32, 3))
  for fields, name in (
      (dict(dropblock=True, drop_rate=1.0), "drop_rate"),
      (dict(dropblock=True, dropblock_size=0), "dropblock_size"),
      (dict(dropblock_warmup_steps=-1), "dropblock_warmup_steps"),
  ):
    with pytest.raises(ValueError, match=name):
      ResNet12Tiny(**fields).init(_key(0), x, False)


def test_takes_step_only_for_resnet12():
  assert takes_step(ResNet12Wide()) and takes_step(RFS_TINY())
  assert not takes_step(fsl_train.build_model(_config("dataset=omniglot,smoke"), 5).encoder)


# ---------------------------------------------------------------- the trainer feeds the step


def test_train_step_gives_the_model_the_state_step():
  seen = []

  def apply_fn(variables, x, train, step, mutable, rngs):
    del train, mutable, rngs
    seen.append(int(step))
    return (x.mean(axis=(1, 2)) @ variables["params"]["w"], {}), {"batch_stats": {}}

  tx, _ = training.make_optimizer(_config("dataset=cifar_fs,smoke").optim, 1)
  state = training.TrainState.create(
      apply_fn=apply_fn, params={"w": jnp.zeros((3, 5))}, batch_stats={}, tx=tx
  ).replace(step=jnp.asarray(7, jnp.int32))
  x = jnp.zeros((4, 8, 8, 3), jnp.uint8)
  fsl_train.train_step(
      state, x, jnp.arange(4) % 5, training.step_rng(0, 0), head="gap", augment_spec=AugmentSpec()
  )
  assert seen == [7]


def test_fewshot_net_ramps_the_encoder_dropblock_with_the_step():
  """FewShotNet at step s equals a network without warm-up at the rate p (s + 1) / W."""
  x = jax.random.normal(_key(12), (8, 32, 32, 3))

  def logits(rate, warmup, step=None):
    encoder = ResNet12Tiny(
        dropblock=True, drop_rate=rate, dropblock_size=2, dropblock_warmup_steps=warmup
    )
    model = fsl_train.FewShotNet(encoder, 5, "linear")
    variables = model.init(_key(13), x[:1], train=False)
    (out, _), _ = model.apply(
        variables, x, True, step=step, rngs={"dropout": _key(14)}, mutable=["batch_stats"]
    )
    return np.asarray(out)

  # Warm-up over 4 steps at 0.5: 0.125 at step 0, 0.5 from step 3 on.
  first, late = logits(0.5, 4, jnp.asarray(0)), logits(0.5, 4, jnp.asarray(7))
  np.testing.assert_array_equal(first, logits(0.125, 0))
  np.testing.assert_array_equal(late, logits(0.5, 0))
  assert not np.array_equal(first, late)


# ---------------------------------------------------------------- the recipe's config


def _config(arg):
  sys.path.insert(0, str(ROOT / "configs" / "fsl"))
  import dense_classification  # pylint: disable=import-outside-toplevel

  return dense_classification.get_config(arg)


@pytest.mark.parametrize(
    "dataset, block, epochs, decays",
    [
        ("miniimagenet", 5, 100, (60, 80)),
        ("cifar_fs", 2, 90, (45, 60, 75)),
        ("fc100", 2, 90, (45, 60, 75)),
    ],
)
def test_rfs_recipe_sets_the_reference_fields(dataset, block, epochs, decays):
  c = _config(f"dataset={dataset},recipe=rfs")
  assert (c.encoder, c.head, c.batch_size) == ("resnet12_wide", "linear", 64)
  assert c.encoder_kwargs.to_dict() == dict(
      dropblock=True,
      drop_rate=0.1,
      dropblock_size=block,
      dropblock_warmup_steps=40_000,
      early_dropout=True,
  )
  o = c.optim
  assert (o.lr, o.momentum, o.nesterov, o.weight_decay) == (0.05, 0.9, False, 5e-4)
  assert (o.schedule, o.epochs, tuple(o.decay_epochs), o.decay_factor) == (
      "step",
      epochs,
      decays,
      0.1,
  )


def test_rfs_recipe_refuses_omniglot_and_encoders_without_dropblock():
  with pytest.raises(ValueError, match="recipe=rfs.*omniglot"):
    _config("dataset=omniglot,recipe=rfs")
  with pytest.raises(ValueError, match="resnet12"):
    _config("dataset=cifar_fs,recipe=rfs,encoder=resnet18")


def test_default_recipe_is_unchanged():
  c = _config("dataset=miniimagenet")
  assert (c.encoder, c.head, c.batch_size, c.optim.lr, c.optim.nesterov) == (
      "conv4",
      "dc",
      128,
      0.1,
      True,
  )
  assert "dropblock" not in c.encoder_kwargs


def test_wide_control_with_the_rfs_encoder_is_refused():
  c = _config("dataset=cifar_fs,recipe=rfs,smoke")
  c.wide_control.width = 4
  with pytest.raises(ValueError, match="wide_control.width"):
    fsl_train.build_model(c, 5)
