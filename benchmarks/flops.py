"""FLOPs of a forward pass and of its training step, counted the way papers count them.

Every convolution is `2 x output elements x kernel taps x input channels per group` FLOPs
(one multiply and one add per MAC) and every matrix product `2 x output elements x contracted
size`, padding taps included: the convention behind the usual model figures (torchvision's
ResNet-18 GMACs are half this count). XLA's cost analysis leaves out the taps that fall on
padding, which undercounts small feature maps (ResNet-18 at 84x84, whose last stage
runs on 3x3 maps: 0.485 GFLOP per image there against 0.593 here).

A training step does each convolution and product three times, forward, input gradient and
weight gradient, except that no input gradient is computed where the input does not depend on
the parameters (the first convolution, which sees the images) and no weight gradient where
the kernel is not a parameter. `training_step_flops` counts exactly that, by following which
values of the traced forward pass depend on the parameters.

Trace a model built with plain flax layers (`build_encoder(name, cpu_kernels=False)`): the CPU
kernels' convolutions are FFI calls, which carry no shapes this count can read, and a forward pass that
holds one is refused with a ValueError, as are loops and conditionals.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

# Primitives whose sub-program takes the primitive's own operands in order, so that which
# operands depend on the parameters carries over position by position.
_CALLS = {
    'jit': 'jaxpr',
    'pjit': 'jaxpr',
    'closed_call': 'call_jaxpr',
    'core_call': 'call_jaxpr',
    'remat': 'jaxpr',
    'checkpoint': 'jaxpr',
    'custom_jvp_call': 'call_jaxpr',
    'custom_vjp_call': 'call_jaxpr',
    'custom_vjp_call_jaxpr': 'fun_jaxpr',
}


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  kernel = eqn.invars[1].aval.shape
  spec = eqn.params['dimension_numbers'].rhs_spec  # (out channels, in channels, *spatial)
  taps = int(np.prod([kernel[d] for d in spec[2:]]))
  if eqn.params.get('batch_group_count', 1) != 1:
    raise ValueError(
        "FLOP count: batch_group_count > 1 (a convolution's weight "
        'gradient) in a forward pass is not supported'
    )
  return 2 * int(np.prod(out)) * taps * kernel[spec[1]]


def _dot_flops(eqn) -> int:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  contracted = int(np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract]))
  return 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted


def _count(jaxpr, depends: Sequence[bool]) -> tuple[int, int]:
  """(forward FLOPs, training-step FLOPs) of `jaxpr`, given which invars depend on params."""
  dependent = {v for v, d in zip(jaxpr.invars, depends) if d}

  def is_dependent(v) -> bool:
    return not isinstance(v, jax_core.Literal) and v in dependent

  forward = step = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    operands = [is_dependent(v) for v in eqn.invars]
    if name in ('conv_general_dilated', 'dot_general'):
      flops = _conv_flops(eqn) if name == 'conv_general_dilated' else _dot_flops(eqn)
      forward += flops
      # Forward, then the gradient with respect to each operand that needs one.
      step += flops * (1 + operands[0] + operands[1])
    elif name in _CALLS and _CALLS[name] in eqn.params:
      inner = eqn.params[_CALLS[name]]
      inner = inner.jaxpr if hasattr(inner, 'jaxpr') else inner
      inner_forward, inner_step = _count(inner, operands)
      forward, step = forward + inner_forward, step + inner_step
    elif any(isinstance(p, (jax_core.Jaxpr, jax_core.ClosedJaxpr)) for p in eqn.params.values()):
      raise ValueError(
          f'FLOP count: primitive `{name}` holds a sub-program whose '
          'operands this count cannot follow (loops, conditionals); count '
          'a forward pass written without them (unrolled)'
      )
    elif name == 'ffi_call':
      raise ValueError(
          "FLOP count: an FFI call (a native kernel, such as the CPU kernels' "
          'convolutions) has no count; trace the model built with plain flax '
          'layers'
      )
    if any(operands):
      dependent.update(eqn.outvars)
  return forward, step


def training_step_flops(
    apply: Callable[[Any, Any], Any], params: Any, *inputs: Any
) -> tuple[int, int]:
  """(forward FLOPs, training-step FLOPs) of `apply(params, *inputs)`.

  The step figure is the forward pass plus the input and weight gradients that back-propagation
  to `params` computes (see the module docstring); elementwise work, normalisation and the
  optimizer update are not counted, as is the custom for model FLOPs.
  """
  closed = jax.make_jaxpr(apply)(params, *inputs)
  n_params = len(jax.tree_util.tree_leaves(params))
  n_inputs = len(closed.jaxpr.invars) - n_params
  return _count(closed.jaxpr, [True] * n_params + [False] * n_inputs)
