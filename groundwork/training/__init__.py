"""Training plumbing shared by both trainers.

Each name below is imported from its module on first use: a config parses its
`file.py:args` (`parse_args`) without loading JAX, Flax and Orbax.
"""

import importlib

_EXPORTS = {
    'groundwork.training.checkpoint': ('CheckpointMismatchError', 'Checkpointer'),
    'groundwork.training.config_args': ('parse_args',),
    'groundwork.training.files': ('read_json', 'save_config', 'write_json'),
    'groundwork.training.mesh': (
        'batch_sharding',
        'check_batch_size',
        'data_mesh',
        'replicate',
        'replicated_sharding',
        'shard_batch',
    ),
    'groundwork.training.metric_log': ('MetricLogger', 'NonFiniteLossError', 'check_finite'),
    'groundwork.training.optim': ('make_optimizer', 'make_schedule'),
    'groundwork.training.preemption': ('Preempted', 'StopRequest'),
    'groundwork.training.rng': ('seed_key', 'step_rng'),
    'groundwork.training.state': ('TrainState',),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name not in _MODULE_OF:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(_MODULE_OF[name]), name)
  globals()[name] = value  # Later look-ups no longer come here.
  return value


def __dir__():
  return sorted(set(globals()) | set(_MODULE_OF))
