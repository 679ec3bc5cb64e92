"""One run over several processes (hosts) on JAX's own distributed runtime.

`initialize_from_env_or_flags` starts `jax.distributed` when the run was launched as several
processes, before JAX touches a device:

- the launcher's flags (--coordinator_address, --num_processes, --process_id), else the
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; what is missing
  JAX's own detection fills in (SLURM, Open MPI, Cloud TPU);
- else a scheduler that started several processes (a SLURM step of several tasks, Open MPI
  with several ranks) or a Cloud TPU VM: `jax.distributed.initialize()` alone, JAX's
  detection reading the scheduler's variables or the TPU metadata;
- else nothing: one process, all its local devices.

Every process then runs the same program on the same data files. Each global array (state,
batch) spans all processes' devices (groundwork/training/mesh.py); values that decide what
every process does next (a validation accuracy, pseudo-labels) are process 0's
(`from_process_0`), so the processes never disagree on which collective comes next. Only
process 0 writes files (`is_main_process`). docs/multihost.md has the commands.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

ENV_VARIABLES = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer.') from None


def scheduler_processes(environ: Mapping[str, str] = os.environ) -> int:
  """How many processes a scheduler started for this program: a SLURM step's tasks
  (SLURM_STEP_NUM_TASKS, set by srun; an sbatch script itself is one process), Open MPI's
  ranks; 1 elsewhere."""
  for name in ('SLURM_STEP_NUM_TASKS', 'OMPI_COMM_WORLD_SIZE'):
    count = _env_int(environ, name)
    if count is not None:
      return count
  return 1


def on_cloud_tpu_vm() -> bool:
  """libtpu installed and TPU chips attached: JAX finds the slice's hosts in the metadata
  (a single-host slice is one process)."""
  return importlib.util.find_spec('libtpu') is not None and bool(
      glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')
  )


def distributed_arguments(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict | None:
  """The keyword arguments of `jax.distributed.initialize` for this launch (None: one
  process, nothing to start); an empty dict leaves everything to JAX's detection."""
  address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS') or None
  count = _env_int(environ, 'JAX_NUM_PROCESSES') if num_processes is None else num_processes
  index = _env_int(environ, 'JAX_PROCESS_ID') if process_id is None else process_id
  given = {'coordinator_address': address, 'num_processes': count, 'process_id': index}
  given = {k: v for k, v in given.items() if v is not None}
  if given:
    if count is not None and count < 1:
      raise ValueError(f'--num_processes (JAX_NUM_PROCESSES)={count} must be at least 1.')
    if count is not None and index is not None and not 0 <= index < count:
      raise ValueError(
          f'--process_id (JAX_PROCESS_ID)={index} must lie in [0, {count - 1}] for '
          f'--num_processes={count}: give each process its own id from 0.'
      )
    if count == 1:
      return None  # One process asked for explicitly: no coordinator to start.
    return given
  if scheduler_processes(environ) > 1 or on_cloud_tpu_vm():
    return {}
  return None


def initialize_from_env_or_flags(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> bool:
  """Starts `jax.distributed` when this launch is one of several processes; call before
  anything touches a device. Returns whether it started it."""
  arguments = distributed_arguments(coordinator_address, num_processes, process_id, environ)
  if arguments is None or jax.distributed.is_initialized():
    return False
  try:
    jax.distributed.initialize(**arguments)
  except ValueError as error:  # JAX's detection found no cluster to fill in the rest.
    raise ValueError(
        f'cannot start {arguments.get("num_processes", "several")} processes ({error}): pass '
        "--coordinator_address=HOST:PORT (process 0's host, a free port), --num_processes "
        'and --process_id, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and '
        'JAX_PROCESS_ID; see docs/multihost.md.'
    ) from None
  return True


def is_main_process() -> bool:
  """Whether this process writes the run's files (process 0; the others hold the same)."""
  return jax.process_index() == 0


def from_process_0(tree: Any) -> Any:
  """Process 0's values of a pytree of host values, on every process (as NumPy arrays of
  the same dtypes and bits); every process must call it at the same point."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  leaves, treedef = jax.tree.flatten(tree)
  arrays = [np.asarray(leaf) for leaf in leaves]
  # Sent as raw bytes: JAX without 64-bit types would round a float64 to float32.
  sent = multihost_utils.broadcast_one_to_all(
      [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
  )
  return treedef.unflatten(
      [np.asarray(b, np.uint8).view(a.dtype).reshape(a.shape) for b, a in zip(sent, arrays)]
  )


def to_local(tree: Any) -> Any:
  """Whole copies of the arrays in `tree` (sharded over any processes' devices) on this
  process's first device: every process then computes on all of them alone."""
  device = jax.local_devices()[0]
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_put(tree, device)


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process; every process must call it at the same point."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
