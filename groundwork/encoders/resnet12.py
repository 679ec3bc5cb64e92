"""ResNet-12 of the few-shot literature (TADAM, MetaOptNet, RFS, Lifchitz et al. 2019).

Four residual blocks; each is 3 x (3x3 conv without bias -> BN -> activation) with the
third activation after the residual add, a 1x1 conv + BN shortcut and a 2x2 max-pool.
84x84 inputs give a 5x5 final map, 32x32 inputs a 2x2 one.

Regularisation as RFS / MetaOptNet (all off by default): DropBlock after the max-pool of
the last two blocks, its rate ramped up over training, and plain dropout after the max-pool
of the first two. The ramp is a function of the training step, which the caller passes as
`step` (the TrainState's), so a resumed run continues it.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groundwork.encoders.layers import (
    DropBlock,
    ModuleDef,
    activation_fn,
    batch_norm,
    encoder_outputs,
)

Array = jax.Array
Dtype = Any

# Kaiming normal, fan_out, gain sqrt(2): the init of the MetaOptNet / RFS code.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResNet12Block(nn.Module):
  """One ResNet-12 block: [B, H, W, C_in] -> [B, floor(H/2), floor(W/2), width].

  After the max-pool, as in RFS: dropout at `dropout_rate`, then DropBlock at `drop_rate`
  (warmed up over `dropblock_warmup_steps`, which needs `step`), each only when `train`.
  `make_conv`, `make_norm`, `layer_outputs` and `finish` are the block's parts for
  subclasses that add layers beside it (fsl/implanting.py); call them from `__call__`.
  """

  width: int
  activation: str = "leaky_relu"
  drop_rate: float = 0.0
  dropblock_size: int = 5
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool
  dropout_rate: float = 0.0
  dropblock_warmup_steps: int = 0

  @nn.compact
  def __call__(self, x: Array, train: bool, step: Array | int | None = None) -> Array:
    return self.finish(self.layer_outputs(x, train)[-1], train, step)

  def make_conv(self, features: int, kernel: int, name: str) -> nn.Module:
    """A `kernel` x `kernel` 'SAME' conv without bias, initialised like the block's."""
    return self.conv(
        features,
        (kernel, kernel),
        padding="SAME",
        use_bias=False,
        kernel_init=_conv_init,
        dtype=self.dtype,
        name=name,
    )

  def make_norm(self, train: bool, name: str, momentum: float = 0.9) -> nn.Module:
    return batch_norm(self.norm, train, self.dtype, name, momentum)

  def layer_outputs(self, x: Array, train: bool) -> tuple[Array, Array, Array, Array]:
    """(x, then the activations of conv0, conv1 and conv2, the last after the residual add)."""
    act = activation_fn(self.activation)
    shortcut = self.make_conv(self.width, 1, "shortcut_conv")(x)
    shortcut = self.make_norm(train, "shortcut_bn")(shortcut)
    outputs = [x]
    for i in range(3):
      y = self.make_conv(self.width, 3, f"conv{i}")(outputs[-1])
      y = self.make_norm(train, f"bn{i}")(y)
      outputs.append(act(y + shortcut if i == 2 else y))
    return tuple(outputs)

  def finish(self, y: Array, train: bool, step: Array | int | None = None) -> Array:
    """The block's end: 2x2 max-pool (odd sizes floored), then dropout and DropBlock."""
    y = self.pool(y, (2, 2), strides=(2, 2), padding="VALID")
    if self.dropout_rate > 0.0:
      y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    dropblock = DropBlock(self.drop_rate, self.dropblock_size, self.dropblock_warmup_steps)
    return dropblock(y, deterministic=not train, step=step)


class ResNet12(nn.Module):
  """ResNet-12 encoder: `(x [B,H,W,3], train) -> (feature_map [B,h,w,C], pooled [B,C])`.

  `dropblock=True` turns on DropBlock with `drop_rate` and `dropblock_size` in the last two
  blocks (block2, block3), as RFS does; `dropblock_warmup_steps` > 0 ramps its rate up
  linearly from the first training step (RFS / MetaOptNet: 40,000), and a training call
  then needs `step`, the 0-based training step. `early_dropout=True` adds plain dropout at
  `drop_rate` to the first two blocks (block0, block1), as RFS and MetaOptNet do. All off by
  default.
  """

  widths: Sequence[int] = (64, 128, 256, 512)
  activation: str = "leaky_relu"
  dropblock: bool = False
  drop_rate: float = 0.1
  dropblock_size: int = 5
  dropblock_warmup_steps: int = 0
  early_dropout: bool = False
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  def _check_fields(self) -> None:
    """Raises ValueError naming the field that is out of range."""
    if len(self.widths) != 4:
      raise ValueError(f"ResNet12 needs 4 widths, got widths={tuple(self.widths)}.")
    if (self.dropblock or self.early_dropout) and not 0.0 <= self.drop_rate < 1.0:
      raise ValueError(
          f"ResNet12 needs 0 <= drop_rate < 1 (RFS: 0.1), got drop_rate={self.drop_rate}."
      )
    if self.dropblock and self.dropblock_size < 1:
      raise ValueError(
          f"ResNet12 needs dropblock_size >= 1 (RFS: 5 at 84x84, 2 at 32x32), got "
          f"dropblock_size={self.dropblock_size}."
      )
    if self.dropblock_warmup_steps < 0:
      raise ValueError(
          "ResNet12 needs dropblock_warmup_steps >= 0 (0 = no warm-up; RFS: 40000), got "
          f"dropblock_warmup_steps={self.dropblock_warmup_steps}."
      )

  @nn.compact
  def __call__(self, x: Array, train: bool, step: Array | int | None = None) -> tuple[Array, Array]:
    self._check_fields()
    for i, width in enumerate(self.widths):
      drop_rate = self.drop_rate if (self.dropblock and i >= 2) else 0.0
      dropout_rate = self.drop_rate if (self.early_dropout and i < 2) else 0.0
      x = ResNet12Block(
          width,
          activation=self.activation,
          drop_rate=drop_rate,
          dropblock_size=self.dropblock_size,
          dtype=self.dtype,
          conv=self.conv,
          norm=self.norm,
          pool=self.pool,
          dropout_rate=dropout_rate,
          dropblock_warmup_steps=self.dropblock_warmup_steps,
          name=f"block{i}",
      )(x, train, step)
    return encoder_outputs(x)


# Default widths: 7,996,800 parameters, the network of Lifchitz et al. 2019.
# 12,424,320 parameters: MetaOptNet / RFS widths.
ResNet12Wide = functools.partial(ResNet12, widths=(64, 160, 320, 640))
# For tests and smoke runs only.
ResNet12Tiny = functools.partial(ResNet12, widths=(4, 8, 8, 16))
