"""Shared image encoders (flax linen, NHWC, float32 parameters, `dtype` compute).

Every encoder maps `(x, train)` to `(feature_map [B,h,w,C], pooled [B,C])`; classifier heads
belong to the trainers. Dropout and DropBlock draw from the 'dropout' rng collection and
BatchNorm statistics live in 'batch_stats'.
"""

from collections.abc import Callable

import flax.linen as nn

from groundwork.encoders.cnn13 import CNN13, CNN13Tiny
from groundwork.encoders.conv4 import Conv4, Conv4Block
from groundwork.encoders.layers import DropBlock, WeightNormConv, WeightNormDense
from groundwork.encoders.resnet12 import ResNet12, ResNet12Block, ResNet12Tiny, ResNet12Wide
from groundwork.encoders.resnet18 import BasicBlock, ResNet18, ResNet18Tiny

_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet12": ResNet12,
    "resnet12_wide": ResNet12Wide,
    "resnet18": ResNet18,
    "cnn13": CNN13,
    "conv4": Conv4,
}


def encoder_names() -> list[str]:
    """Names accepted by `build_encoder`."""
    return list(_ENCODERS)


def build_encoder(name: str, **kwargs) -> nn.Module:
    """The encoder called `name`, its fields overridden by `kwargs` (e.g. dtype, widths)."""
    if name not in _ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {encoder_names()}.")
    return _ENCODERS[name](**kwargs)


__all__ = [
    "BasicBlock", "CNN13", "CNN13Tiny", "Conv4", "Conv4Block", "DropBlock", "ResNet12",
    "ResNet12Block", "ResNet12Tiny", "ResNet12Wide", "ResNet18", "ResNet18Tiny",
    "WeightNormConv", "WeightNormDense", "build_encoder", "encoder_names",
]
