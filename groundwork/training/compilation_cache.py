"""Compiled programs kept on disk between runs (JAX's persistent compilation cache).

A resumed run, `launch/evaluate.py` on a finished workdir, implanting on another base
network of the same shape, or the next seed of a sweep compiles the very programs an
earlier run compiled; with the cache they are read back instead (docs/performance.md,
"Compilation cache"). A program read back is the executable XLA built before, so the
numbers are the same as with a fresh compile.

The launch scripts turn it on (`--compilation_cache=DIR`, default `default_directory()`;
an empty value turns it off). Only compilations of at least a second are kept (JAX's
`jax_persistent_cache_min_compile_time_secs`) and nothing is evicted: delete the folder
to reclaim the space.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys


def _host_processor() -> str:
  """The host CPU's model and instruction-set flags (Linux), else what Python knows.

  A CPU executable is machine code for the host it was compiled on; a home folder shared by
  a cluster's unlike nodes must not hand one node's code to another.
  """
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      lines = [l for l in f if l.startswith(('model name', 'flags', 'Features'))]
  except OSError:
    lines = []
  return ''.join(sorted(set(lines))) or f'{platform.machine()} {platform.processor()}'


def default_directory() -> str:
  """`$XDG_CACHE_HOME` (else ~/.cache) `/dense_lp/xla/<host processor>`."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  processor = hashlib.sha256(_host_processor().encode()).hexdigest()[:12]
  return os.path.join(root, 'dense_lp', 'xla', f'{platform.machine()}-{processor}')


def enable(directory: str | None) -> str | None:
  """Keeps compiled programs in `directory` from now on; returns it, or None when
  `directory` is empty or cannot be written (a warning says so and the run compiles as
  usual: a cache is never a reason to stop training)."""
  if not directory:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f'.write_probe_{os.getpid()}')
    with open(probe, 'w', encoding='utf-8'):
      pass
    os.remove(probe)
  except OSError as error:
    sys.stderr.write(
        f'WARNING compilation cache {directory} is not writable ({error.strerror}); compiling '
        'without it. Pass --compilation_cache=DIR with a writable folder, or '
        '--compilation_cache= to turn it off.\n'
    )
    return None
  import jax  # pylint: disable=import-outside-toplevel  # The launchers parse flags first.

  jax.config.update('jax_compilation_cache_dir', directory)
  return directory
