"""Conv-4 (Vinyals et al. 2016; Snell et al. 2017): four conv3x3 -> BN -> ReLU -> max-pool 2.

28x28 inputs give a 1x1 final map, 84x84 inputs a 5x5 one.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groundwork.encoders.layers import (
    ModuleDef,
    activation_fn,
    batch_norm,
    encoder_outputs,
    torch_default_kernel_init,
)

Array = jax.Array
Dtype = Any


class Conv4Block(nn.Module):
  """conv3x3 'SAME' with bias -> BN -> activation -> 2x2 max-pool; submodules `conv`, `bn`.

  `downsample=False` drops the max-pool. `make_conv`, `make_norm`, `layer_outputs` and
  `finish` are the block's parts for subclasses that add layers beside it
  (fsl/implanting.py); call them from `__call__`.
  """

  width: int = 64
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  downsample: bool = True
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    return self.finish(self.layer_outputs(x, train)[-1])

  def make_conv(self, features: int, name: str) -> nn.Module:
    """A 3x3 'SAME' conv with bias, initialised like the block's."""
    return self.conv(
        features,
        (3, 3),
        padding="SAME",
        kernel_init=torch_default_kernel_init,
        dtype=self.dtype,
        name=name,
    )

  def make_norm(self, train: bool, name: str, momentum: float = 0.9) -> nn.Module:
    return batch_norm(self.norm, train, self.dtype, name, momentum)

  def layer_outputs(self, x: Array, train: bool) -> tuple[Array, Array]:
    """(x, the activation of the conv)."""
    y = self.make_norm(train, "bn")(self.make_conv(self.width, "conv")(x))
    return x, activation_fn(self.activation)(y)

  def finish(self, y: Array) -> Array:
    """The block's end: the 2x2 max-pool (odd sizes floored) unless `downsample=False`."""
    return self.pool(y, (2, 2), strides=(2, 2), padding="VALID") if self.downsample else y


class Conv4(nn.Module):
  """Conv-4 encoder: `(x [B,H,W,C], train) -> (feature_map [B,h,w,width], pooled [B,width])`.

  `pool_blocks` < 4 drops the max-pool of the last blocks (as DN4 and CAN do), so small
  inputs keep a spatial map for dense classification: 28x28 with pool_blocks=2 gives 7x7.
  """

  width: int = 64
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  pool_blocks: int = 4
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    if not 0 <= self.pool_blocks <= 4:
      raise ValueError(f"Conv4 pool_blocks must be in 0..4, got {self.pool_blocks}.")
    for i in range(4):
      x = Conv4Block(
          self.width,
          self.activation,
          dtype=self.dtype,
          downsample=i < self.pool_blocks,
          conv=self.conv,
          norm=self.norm,
          pool=self.pool,
          name=f"block{i}",
      )(x, train)
    return encoder_outputs(x)
