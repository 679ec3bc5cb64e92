"""groundwork_cpu: CPU-only kernels for groundwork, built at install time.

Drop-ins that compute the same functions as JAX/flax, faster on XLA's CPU backend:

  conv_general_dilated   `jax.lax.conv_general_dilated`; float32 NHWC/HWIO convolutions on
                         oneDNN (pass it to `flax.linen.Conv(conv_general_dilated=...)`).
  BatchNorm              `flax.linen.BatchNorm`; training mode on float32 through oneDNN.
  max_pool               `flax.linen.max_pool`; float32 NHWC on oneDNN.
  knn_search             exact kNN by inner product of L2-normalised rows, self excluded.
  row_graph              W = D^-1/2 (A + A^T) D^-1/2 of kNN lists: `build`, `matvec`, `degree`.
  report()               what was built and where, one line per library.

Importing the package loads its C++ libraries (groundwork_cpu/lib/*.so, compiled by
`pip install --no-build-isolation ./cpu_kernels`) and registers their XLA FFI handlers for the
CPU; no compiler ever runs here, and a missing or unloadable library raises ImportError with
the file and the reinstall command. Use these only where JAX computes on the CPU (the caller
decides, in groundwork/backend.py). NOTES.md has the measurements behind every choice.
"""

from groundwork_cpu import row_graph
from groundwork_cpu._native import report
from groundwork_cpu.conv import conv_general_dilated
from groundwork_cpu.knn import knn_search
from groundwork_cpu.layers import BatchNorm, max_pool

__all__ = ['BatchNorm', 'conv_general_dilated', 'knn_search', 'max_pool', 'report', 'row_graph']
