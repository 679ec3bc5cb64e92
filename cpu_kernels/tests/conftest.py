"""Test-wide settings, as the repository's tests/conftest.py.

The tests compare against plain JAX/flax/NumPy references at float32 tolerances; the matmul
and convolution precision of those references is pinned to full float32 (on GPUs JAX's
default is TF32, about 3 decimal digits; on CPU the setting changes nothing). The kernels
serve the CPU only, so JAX computes there.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
