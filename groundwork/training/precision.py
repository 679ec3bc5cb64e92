"""Mixed precision from the config: the compute dtype and the matmul precision.

`config.dtype` is what convolutions and matrix products compute in: 'float32' (the papers')
or 'bfloat16'. Everything else stays float32 under either: parameters are created float32
and cast where they are used (flax's `dtype` / `param_dtype`), so the gradients and the
optimizer state are float32; flax's BatchNorm keeps its running statistics float32 whatever
it computes in; and every encoder hands its features on in float32 (`groundwork.encoders`),
so the heads, logits, softmax, losses, prototypes, kNN and label propagation compute as they
do under float32. They are a small share of a step's work, and bfloat16's 8-bit mantissa
would round a cosine classifier's logits (scale ~10) in steps of ~0.06.

`config.matmul_precision` is JAX's default precision for products and convolutions of
float32 operands (`jax.default_matmul_precision`): 'highest' (true float32, the default:
the papers trained in float32, while JAX's 'default' is TF32's 10-bit mantissa on a recent
NVIDIA GPU and one bfloat16 pass on a TPU), 'high' (TF32 on a GPU, three bfloat16 passes
on a TPU) or 'default'. Operands computed in bfloat16 are not affected; on a CPU nothing is.
"""

import functools
from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import ml_collections

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MATMUL_PRECISIONS = ('default', 'high', 'highest')
# What a config written before these fields existed (a workdir's config.json) computed in.
DEFAULT_DTYPE = 'float32'
DEFAULT_MATMUL_PRECISION = 'highest'

Fn = TypeVar('Fn', bound=Callable)


def dtype_name(config: ml_collections.ConfigDict) -> str:
  return config.get('dtype', DEFAULT_DTYPE)


def matmul_precision_name(config: ml_collections.ConfigDict) -> str:
  return config.get('matmul_precision', DEFAULT_MATMUL_PRECISION)


def check_precision(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming `config.dtype` or `config.matmul_precision` if not allowed."""
  for field, value, allowed in (
      ('dtype', dtype_name(config), tuple(DTYPES)),
      ('matmul_precision', matmul_precision_name(config), MATMUL_PRECISIONS),
  ):
    if value not in allowed:
      raise ValueError(
          f"config.{field}={value!r} is not one of {list(allowed)}; the papers' setting is "
          f'{DEFAULT_DTYPE if field == "dtype" else DEFAULT_MATMUL_PRECISION!r}.'
      )


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The encoders' compute dtype, `config.dtype` (checked)."""
  check_precision(config)
  return jnp.dtype(DTYPES[dtype_name(config)])


def precision_record(config: ml_collections.ConfigDict) -> dict[str, str]:
  """What results.json records of how a run computed."""
  return {'dtype': dtype_name(config), 'matmul_precision': matmul_precision_name(config)}


def with_matmul_precision(fn: Fn) -> Fn:
  """`fn(config, ...)` run under `jax.default_matmul_precision(config.matmul_precision)`.

  Every function it traces (the train step, the embeddings, label propagation) is compiled
  with that precision; the setting is part of jit's cache key, so nothing compiled outside
  is reused inside.
  """

  @functools.wraps(fn)
  def wrapped(config: ml_collections.ConfigDict, *args, **kwargs):
    check_precision(config)
    with jax.default_matmul_precision(matmul_precision_name(config)):
      return fn(config, *args, **kwargs)

  return wrapped
