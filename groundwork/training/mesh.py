"""One 1-D data mesh over all devices; `jax.jit` with shardings, no pmap.

The same step runs on 1 CPU, 8 GPUs or a multi-host TPU slice: the batch is
split along its first axis over the 'data' axis, parameters are replicated,
and XLA inserts the gradient all-reduce.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def data_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


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


def shard_batch(tree, mesh: Mesh):
  """Places host arrays on the devices, split along the leading axis."""
  if jax.process_count() > 1:
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )
  return jax.device_put(tree, batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated_sharding(mesh))
