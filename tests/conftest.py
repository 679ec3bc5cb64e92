"""Test-wide settings.

The tests compare against dense NumPy/SciPy references at float32 tolerances. On
GPUs JAX's default float32 matmul and convolution precision is TF32 (about 3
decimal digits), which would make those comparisons test the rounding, not the
maths; on CPU this setting changes nothing.
"""

import jax

jax.config.update('jax_default_matmul_precision', 'highest')
