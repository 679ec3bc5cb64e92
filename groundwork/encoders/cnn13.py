"""CNN-13, the "conv-large" of Mean Teacher as the label-propagation code (Iscen et al. 2019)
builds it: weight-normalised convs with bias, each followed by BN and leaky ReLU 0.1.

32x32 inputs: 3 x conv3x3(128) -> max-pool -> dropout -> 3 x conv3x3(256) -> max-pool ->
dropout -> conv3x3(512, valid) -> conv1x1(256) -> conv1x1(128): a 6x6x128 map, then global
average pooling (the reference's AvgPool2d(6) on that map) to a 128-d feature.
The classifier (one `WeightNormDense(num_classes)`) belongs to the trainer.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groundwork.encoders.layers import (
    ModuleDef,
    WeightNormConv,
    activation_fn,
    batch_norm,
    encoder_outputs,
)

Array = jax.Array
Dtype = Any


class CNN13(nn.Module):
  """CNN-13 encoder: `(x [B,H,W,3], train) -> (feature_map [B,h,w,C], pooled [B,C])`.

  `widths` are the channels of the three conv stages and the two 1x1 convs.
  Submodules: `conv1a..conv3c` and `bn1a..bn3c` (the reference names).
  Dropout 0.5 after each of the first two max-pools uses the 'dropout' rng.
  """

  widths: Sequence[int] = (128, 256, 512, 256, 128)
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  conv: ModuleDef = WeightNormConv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    if len(self.widths) != 5:
      raise ValueError(f"CNN13 needs 5 widths, got widths={tuple(self.widths)}.")
    act = activation_fn("leaky_relu")
    w1, w2, w3a, w3b, w3c = self.widths

    def conv_bn_act(y: Array, name: str, width: int, kernel: int, padding) -> Array:
      y = self.conv(width, kernel, padding, dtype=self.dtype, name=f"conv{name}")(y)
      return act(batch_norm(self.norm, train, self.dtype, f"bn{name}")(y))

    for stage, width in (("1", w1), ("2", w2)):
      for sub in "abc":
        x = conv_bn_act(x, stage + sub, width, 3, 1)
      x = self.pool(x, (2, 2), strides=(2, 2), padding="VALID")
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = conv_bn_act(x, "3a", w3a, 3, "VALID")
    x = conv_bn_act(x, "3b", w3b, 1, "VALID")
    x = conv_bn_act(x, "3c", w3c, 1, "VALID")
    return encoder_outputs(x)


# For tests and smoke runs only.
CNN13Tiny = functools.partial(CNN13, widths=(4, 8, 8, 8, 4))
