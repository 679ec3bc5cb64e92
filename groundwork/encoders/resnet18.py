"""ResNet-18 with torchvision's BasicBlock design ([2, 2, 2, 2] blocks of two 3x3 convs).

ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool): 84x84 -> 3x3 final map.
CIFAR stem (`cifar_stem=True`, 3x3 stride-1 conv, no max-pool): 32x32 -> 4x4 final map.
Paddings are torch's explicit ones, so output sizes match torchvision for any input size.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from groundwork.encoders.layers import ModuleDef, batch_norm, encoder_outputs

Array = jax.Array
Dtype = Any

# torchvision's init: kaiming normal, fan_out, ReLU gain.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
    conv: ModuleDef, features: int, kernel: int, stride: int, dtype: Dtype, name: str
) -> nn.Module:
  pad = kernel // 2
  return conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=_conv_init,
      dtype=dtype,
      name=name,
  )


class BasicBlock(nn.Module):
  """torchvision BasicBlock; the 1x1 conv + BN shortcut exists when shape changes."""

  width: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = _conv(self.conv, self.width, 3, self.stride, self.dtype, "conv0")(x)
    y = nn.relu(batch_norm(self.norm, train, self.dtype, "bn0")(y))
    y = _conv(self.conv, self.width, 3, 1, self.dtype, "conv1")(y)
    y = batch_norm(self.norm, train, self.dtype, "bn1")(y)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = _conv(self.conv, self.width, 1, self.stride, self.dtype, "shortcut_conv")(x)
      x = batch_norm(self.norm, train, self.dtype, "shortcut_bn")(x)
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """ResNet-18 encoder: `(x [B,H,W,3], train) -> (feature_map [B,h,w,C], pooled [B,C])`.

  Submodules: `stem_conv`, `stem_bn`, then `stage{s}_block{b}` for s in 0..3, b in 0..1.
  """

  widths: Sequence[int] = (64, 128, 256, 512)
  cifar_stem: bool = False
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  pool: Callable[..., Array] = nn.max_pool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    if len(self.widths) != 4:
      raise ValueError(f"ResNet18 needs 4 widths, got widths={tuple(self.widths)}.")
    if self.cifar_stem:
      x = _conv(self.conv, self.widths[0], 3, 1, self.dtype, "stem_conv")(x)
    else:
      x = _conv(self.conv, self.widths[0], 7, 2, self.dtype, "stem_conv")(x)
    x = nn.relu(batch_norm(self.norm, train, self.dtype, "stem_bn")(x))
    if not self.cifar_stem:
      # torch's MaxPool2d(3, 2, 1).
      x = self.pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, width in enumerate(self.widths):
      for b in range(2):
        stride = 2 if (s > 0 and b == 0) else 1
        x = BasicBlock(
            width,
            stride=stride,
            dtype=self.dtype,
            conv=self.conv,
            norm=self.norm,
            name=f"stage{s}_block{b}",
        )(x, train)
    return encoder_outputs(x)


# For tests and smoke runs only.
ResNet18Tiny = functools.partial(ResNet18, widths=(4, 8, 8, 16))
