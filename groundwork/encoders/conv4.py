"""Conv-4 (Vinyals et al. 2016; Snell et al. 2017): four conv3x3 -> BN -> ReLU -> max-pool 2.

28x28 inputs give a 1x1 final map, 84x84 inputs a 5x5 one.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groundwork.encoders import fast_conv
from groundwork.encoders.layers import (
    activation_fn,
    batch_norm,
    max_pool2,
    torch_default_kernel_init,
)

Array = jax.Array
Dtype = Any


class Conv4Block(nn.Module):
    """conv3x3 'SAME' with bias -> BN -> activation -> 2x2 max-pool; submodules `conv`, `bn`."""

    width: int = 64
    activation: str = "relu"
    dtype: Dtype = jnp.float32
    pool: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = nn.Conv(self.width, (3, 3), padding="SAME", kernel_init=torch_default_kernel_init,
                    dtype=self.dtype, name="conv",
                    conv_general_dilated=fast_conv.conv_general_dilated)(x)
        x = activation_fn(self.activation)(batch_norm(train, self.dtype, "bn")(x))
        return max_pool2(x) if self.pool else x


class Conv4(nn.Module):
    """Conv-4 encoder: `(x [B,H,W,C], train) -> (feature_map [B,h,w,width], pooled [B,width])`.

    `pool_blocks` < 4 drops the max-pool of the last blocks (as DN4 and CAN do), so small
    inputs keep a spatial map for dense classification: 28x28 with pool_blocks=2 gives 7x7.
    """

    width: int = 64
    activation: str = "relu"
    dtype: Dtype = jnp.float32
    pool_blocks: int = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        if not 0 <= self.pool_blocks <= 4:
            raise ValueError(f"Conv4 pool_blocks must be in 0..4, got {self.pool_blocks}.")
        for i in range(4):
            x = Conv4Block(self.width, self.activation, dtype=self.dtype, pool=i < self.pool_blocks,
                           name=f"block{i}")(x, train)
        return x, jnp.mean(x, axis=(1, 2))
