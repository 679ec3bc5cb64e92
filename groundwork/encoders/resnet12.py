"""ResNet-12 of the few-shot literature (TADAM, MetaOptNet, RFS, Lifchitz et al. 2019).

Four residual blocks; each is 3 x (3x3 conv without bias -> BN -> activation) with the
third activation after the residual add, a 1x1 conv + BN shortcut and a 2x2 max-pool.
84x84 inputs give a 5x5 final map, 32x32 inputs a 2x2 one.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groundwork.encoders.layers import DropBlock, ModuleDef, activation_fn, batch_norm

Array = jax.Array
Dtype = Any

# Kaiming normal, fan_out, gain sqrt(2): the init of the MetaOptNet / RFS code.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResNet12Block(nn.Module):
  """One ResNet-12 block: [B, H, W, C_in] -> [B, floor(H/2), floor(W/2), width].

  DropBlock (after the max-pool, as in RFS) acts when `drop_rate` > 0 and `train`.
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

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    return self.finish(self.layer_outputs(x, train)[-1], train)

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

  def finish(self, y: Array, train: bool) -> Array:
    """The block's end: 2x2 max-pool (odd sizes floored), then DropBlock."""
    y = self.pool(y, (2, 2), strides=(2, 2), padding="VALID")
    return DropBlock(self.drop_rate, self.dropblock_size)(y, deterministic=not train)


class ResNet12(nn.Module):
  """ResNet-12 encoder: `(x [B,H,W,3], train) -> (feature_map [B,h,w,C], pooled [B,C])`.

  `dropblock=True` turns on DropBlock with `drop_rate` and `dropblock_size` in the last two
  blocks (block2, block3), as RFS does; it is off by default.
  """

  widths: Sequence[int] = (64, 128, 256, 512)
  activation: str = "leaky_relu"
  dropblock: bool = False
  drop_rate: float = 0.1
  dropblock_size: int = 5
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    if len(self.widths) != 4:
      raise ValueError(f"ResNet12 needs 4 widths, got widths={tuple(self.widths)}.")
    for i, width in enumerate(self.widths):
      drop_rate = self.drop_rate if (self.dropblock and i >= 2) else 0.0
      x = ResNet12Block(
          width,
          activation=self.activation,
          drop_rate=drop_rate,
          dropblock_size=self.dropblock_size,
          dtype=self.dtype,
          conv=self.conv,
          norm=self.norm,
          pool=self.pool,
          name=f"block{i}",
      )(x, train)
    return x, jnp.mean(x, axis=(1, 2))


# Default widths: 7,996,800 parameters, the network of Lifchitz et al. 2019.
# 12,424,320 parameters: MetaOptNet / RFS widths.
ResNet12Wide = functools.partial(ResNet12, widths=(64, 160, 320, 640))
# For tests and smoke runs only.
ResNet12Tiny = functools.partial(ResNet12, widths=(4, 8, 8, 16))
