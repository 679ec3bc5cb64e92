"""The one place that knows which platform JAX computes on.

Models and algorithms are pure JAX. What is specific to a platform is decided here, once,
by the code that builds a model or picks an engine (`build_encoder`, the kNN engine of
`groundwork.knn` and the graph operator of `groundwork.knn_graph`, the implant trainer), never
inside a traced function:

- `cpu_kernels()`: the optional `groundwork_cpu` package (cpu_kernels/ in this repository:
  oneDNN convolutions, BatchNorm and pools, a C++ kNN search and a row-layout diffusion
  graph, built at install time), when it is installed and JAX computes on the CPU.
- `unroll_short_loops()`: whether a short training loop inside one compiled program (the 50
  implant steps of an episode) should be unrolled.
"""

import types

import jax


def computes_on_cpu() -> bool:
  """Whether JAX's default device is a CPU."""
  return jax.default_backend() == 'cpu'


def cpu_kernels() -> types.ModuleType | None:
  """The `groundwork_cpu` package where it is installed and JAX computes on the CPU, else None.

  An installed package that cannot load (built for another jaxlib, its library removed)
  raises with the reason instead of silently falling back to the slower path.
  """
  if not computes_on_cpu():
    return None
  try:
    import groundwork_cpu  # pylint: disable=import-outside-toplevel
  except ModuleNotFoundError as error:
    if error.name != 'groundwork_cpu':
      raise
    return None
  return groundwork_cpu


def require_cpu_kernels() -> types.ModuleType:
  """`cpu_kernels()`, or a RuntimeError that says why it is unavailable and what to do."""
  kernels = cpu_kernels()
  if kernels is None:
    if not computes_on_cpu():
      raise RuntimeError(
          f'the CPU kernels were asked for, but JAX computes on '
          f'{jax.default_backend()!r}; they serve the CPU only.'
      )
    raise RuntimeError(
        'the CPU kernels were asked for, but the groundwork_cpu package is not '
        'installed: `make install` on an x86-64 Linux machine with g++, or '
        '`pip install --no-build-isolation ./cpu_kernels`.'
    )
  return kernels


def unroll_short_loops() -> bool:
  """Whether to unroll a short loop of training steps compiled into one program.

  XLA's CPU backend runs convolutions inside a while loop far slower than in straight-line
  code (docs/performance.md); accelerators keep the loop, which compiles faster.
  """
  return computes_on_cpu()
