"""One 1-D data mesh over all devices; `jax.jit` with shardings, no pmap.

The same step runs on 1 CPU, 8 GPUs or a multi-host TPU slice: the batch is
split along its first axis over the 'data' axis, parameters are replicated,
and XLA inserts the gradient all-reduce.

With several processes the mesh holds every process's devices, each process's together,
so a process's devices hold one contiguous block of rows of every global batch
(`process_rows`). Every process draws the same global batch indices from the config seed
and reads only its block (`local_rows`, then `shard_local_batch`): N processes train on
the `config.batch_size` examples, in the order, of one process.
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from groundwork.training.distributed import to_local

DATA_AXIS = 'data'


def data_mesh() -> Mesh:
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, field: str = 'batch_size') -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(
        f'{field}={batch_size} is not divisible by the {devices} devices; '
        f'use a multiple of {devices}.'
    )


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch of `batch_size` that this process's devices hold."""
  check_batch_size(batch_size, mesh)
  held = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
  starts = sorted(index[0].indices(batch_size)[0] for index in held)
  per_device = batch_size // mesh.devices.size
  if starts != list(range(starts[0], starts[0] + per_device * len(starts), per_device)):
    raise ValueError(  # data_mesh orders devices by process; another mesh may not.
        f'this process holds rows {starts} (by {per_device}) of the batch, not one block: '
        'build the mesh with groundwork.training.data_mesh().'
    )
  return slice(starts[0], starts[0] + per_device * len(starts))


def local_rows(index_batches: np.ndarray, mesh: Mesh) -> np.ndarray:
  """This process's block of each global batch in `index_batches` ([steps, batch])."""
  index_batches = np.asarray(index_batches)
  return index_batches[:, process_rows(index_batches.shape[1], mesh)]


def _place(rows: np.ndarray, global_rows: int, mesh: Mesh) -> jax.Array:
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(rows, sharding)
  return jax.make_array_from_process_local_data(sharding, rows, (global_rows, *rows.shape[1:]))


def shard_local_batch(tree, mesh: Mesh):
  """One global batch, split along the leading axis over the mesh, from each process's
  block of rows (`process_rows`); every process calls it with blocks of one size."""
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  scale = mesh.devices.size // local_devices
  return jax.tree.map(lambda x: _place(np.asarray(x), len(x) * scale, mesh), tree)


def shard_batch(tree, mesh: Mesh):
  """Places a global host batch (the same on every process) on the devices, split along
  the leading axis; each process passes only its own rows."""
  return jax.tree.map(
      lambda x: _place(np.asarray(x)[process_rows(len(x), mesh)], len(x), mesh), tree
  )


def replicate(tree, mesh: Mesh):
  """`tree` whole on every device of the mesh; with several processes each must pass the
  same values (a restored checkpoint, an initialisation from the config seed)."""
  if jax.process_count() > 1:
    # An array committed to this process's devices (a restored checkpoint) cannot be sent
    # to the other hosts' devices on every backend; its value goes from the host instead.
    tree = jax.tree.map(
        lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable else x,
        tree,
    )
  return jax.device_put(tree, replicated_sharding(mesh))


def data_parallel(fn: Callable, mesh: Mesh, batch_argnums: Sequence[int] | None = None) -> Callable:
  """`fn` with the arguments at `batch_argnums` (default: all) split over the mesh along
  their leading axis, and its outputs whole on this process's first device.

  Each device computes its share of a batch; every process then holds all the outputs (an
  evaluation's features, accuracies), as one process would. A batch whose size the devices
  do not divide is padded with copies of its first row, whose outputs are dropped. The
  other arguments must already be on the mesh's devices (`replicate`) or be host values.
  """

  def split(*args):
    numbers = range(len(args)) if batch_argnums is None else batch_argnums
    size = len(args[numbers[0]])
    padded = -(-size // mesh.devices.size) * mesh.devices.size
    args = list(args)
    for i in numbers:
      rows = np.asarray(args[i])
      if padded > size:
        rows = np.concatenate([rows, np.repeat(rows[:1], padded - size, axis=0)])
      args[i] = shard_batch(rows, mesh)
    return jax.tree.map(lambda out: out[:size], to_local(fn(*args)))

  return split
