"""Test-wide settings.

The tests compare against dense NumPy/SciPy references at float32 tolerances. On
GPUs JAX's default float32 matmul and convolution precision is TF32 (about 3
decimal digits), which would make those comparisons test the rounding, not the
maths; on CPU this setting changes nothing.
"""

import contextlib

import jax
import pytest

jax.config.update('jax_default_matmul_precision', 'highest')


@contextlib.contextmanager
def xla_optimizations_off():
  """For tiny models, whose run time is mostly XLA's optimisation passes (about half, measured
  on the recipe matrix); their numbers do not depend on them."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module')
def fast_compiles():
  """`xla_optimizations_off` for a whole test module (`pytest.mark.usefixtures`)."""
  with xla_optimizations_off():
    yield
