"""Training plumbing shared by both trainers.

Each name below is imported from its module on first use: a config parses its
`file.py:args` (`parse_args`) without loading JAX, Flax and Orbax.
"""

from groundwork.lazy_exports import lazy_exports

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
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
