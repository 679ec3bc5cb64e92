"""Shared image encoders (flax linen, NHWC, float32 parameters, `dtype` compute).

Every encoder maps `(x, train)` to `(feature_map [B,h,w,C], pooled [B,C])`; classifier heads
belong to the trainers. Dropout and DropBlock draw from the 'dropout' rng collection and
BatchNorm statistics live in 'batch_stats'. ResNet-12 also takes `step=`, the training step
that drives its DropBlock warm-up (`takes_step`).

Encoders compute in their `dtype` (float32 or bfloat16) with float32 parameters and BatchNorm
statistics, and return float32 features (`encoder_outputs`): what reads them, heads, losses,
prototypes, kNN, label propagation, computes in float32 whatever the encoder's dtype.

Encoders and blocks are pure flax: they take their layers as fields (`conv`, `norm`, `pool`,
as flax's examples/imagenet ResNet does). `build_encoder` is the one place that swaps in a
platform's layers (the optional `groundwork_cpu` package), decided once when the model is
built.
"""

import dataclasses
import functools
import types
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from groundwork import backend
from groundwork.encoders.cnn13 import CNN13, CNN13Tiny
from groundwork.encoders.conv4 import Conv4, Conv4Block
from groundwork.encoders.layers import (
    COMPUTE_DTYPES,
    DropBlock,
    Dtype,
    ModuleDef,
    TorchLinear,
    WeightNormConv,
    WeightNormDense,
)
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


def takes_step(encoder: nn.Module) -> bool:
  """Whether `encoder`'s call takes `step=`, the 0-based training step (ResNet-12's
  DropBlock warm-up); the other encoders' calls are `(x, train)` only."""
  return isinstance(encoder, ResNet12)


def _field_default(factory: Callable[..., nn.Module], field: str):
  """The value `factory()` gives `field`: a partial's keyword, else the class default."""
  if isinstance(factory, functools.partial):
    if field in factory.keywords:
      return factory.keywords[field]
    return _field_default(factory.func, field)
  return {f.name: f.default for f in dataclasses.fields(factory)}[field]


# Cached so that two encoders built alike compare equal (flax modules are dataclasses) and a
# jit that takes the model as a static argument compiles once.
@functools.cache
def _with_conv_general_dilated(conv: ModuleDef, conv_general_dilated: Callable) -> ModuleDef:
  return functools.partial(conv, conv_general_dilated=conv_general_dilated)


def _platform_layers(
    factory: Callable[..., nn.Module], kernels: types.ModuleType | None
) -> dict[str, object]:
  """The `conv`, `norm` and `pool` fields that put `factory`'s encoder on `kernels`.

  `kernels` is a CPU kernels module (`groundwork.backend.cpu_kernels()`): its
  `conv_general_dilated` (lax's signature) goes into the encoder's own conv class, its
  `BatchNorm` (a drop-in `nn.BatchNorm`) and `max_pool` (`nn.max_pool`'s signature) replace
  flax's. None: no fields, plain flax.
  """
  if kernels is None:
    return {}
  conv = _with_conv_general_dilated(_field_default(factory, "conv"), kernels.conv_general_dilated)
  return {"conv": conv, "norm": kernels.BatchNorm, "pool": kernels.max_pool}


def build_encoder(
    name: str, *, cpu_kernels: bool | None = None, dtype: Dtype = jnp.float32, **fields
) -> nn.Module:
  """The encoder called `name`, its fields overridden by `fields` (e.g. widths).

  `dtype` ('float32', 'bfloat16' or the dtype itself) is what its convolutions and
  activations compute in; parameters and BatchNorm statistics are float32 either way, and so
  are the features it returns. `cpu_kernels` picks its layers: None takes the
  `groundwork_cpu` package's where it is installed, JAX computes on the CPU and `dtype` is
  float32 (the package computes in float32 only: a bfloat16 encoder gets flax's layers), else
  flax's; True requires them (RuntimeError saying what to install otherwise; ValueError with
  a bfloat16 `dtype`); False keeps flax's. `conv`, `norm` or `pool` given in `fields` win over
  the package's.
  """
  if name not in _ENCODERS:
    raise ValueError(f"Unknown encoder {name!r}; choose one of {encoder_names()}.")
  dtype = jnp.dtype(dtype)
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(
        f"Encoder dtype {dtype.name!r} is not one of {[d.name for d in COMPUTE_DTYPES]}."
    )
  factory = _ENCODERS[name]
  if cpu_kernels and dtype != jnp.float32:
    raise ValueError(
        f"cpu_kernels=True with dtype={dtype.name!r}: the CPU kernels (groundwork_cpu) "
        "compute in float32 only. Use dtype float32 with them, or leave cpu_kernels unset "
        "(a bfloat16 encoder then runs on flax's layers)."
    )
  if cpu_kernels is None:
    kernels = backend.cpu_kernels() if dtype == jnp.float32 else None
  elif cpu_kernels:
    kernels = backend.require_cpu_kernels()
  else:
    kernels = None
  return factory(**{**_platform_layers(factory, kernels), "dtype": dtype, **fields})


__all__ = [
    "BasicBlock",
    "CNN13",
    "CNN13Tiny",
    "Conv4",
    "Conv4Block",
    "DropBlock",
    "ResNet12",
    "ResNet12Block",
    "ResNet12Tiny",
    "ResNet12Wide",
    "ResNet18",
    "ResNet18Tiny",
    "TorchLinear",
    "WeightNormConv",
    "WeightNormDense",
    "build_encoder",
    "encoder_names",
    "takes_step",
]
