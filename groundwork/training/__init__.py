"""Training plumbing shared by both trainers.

Each name below is imported from its module on first use: a config parses its
`file.py:args` (`parse_args`) without loading JAX, Flax and Orbax.
"""

from groundwork.lazy_exports import lazy_exports

_EXPORTS = {
    'groundwork.training.checkpoint': ('CheckpointMismatchError', 'Checkpointer'),
    'groundwork.training.config_args': ('parse_args',),
    'groundwork.training.distributed': (
        'from_process_0',
        'initialize_from_env_or_flags',
        'is_main_process',
        'to_local',
    ),
    'groundwork.training.files': ('read_json', 'save_config', 'write_json'),
    'groundwork.training.mesh': (
        'batch_sharding',
        'check_batch_size',
        'data_mesh',
        'data_parallel',
        'local_rows',
        'process_rows',
        'replicate',
        'replicated_sharding',
        'shard_batch',
        'shard_local_batch',
    ),
    'groundwork.training.metric_log': ('MetricLogger', 'NonFiniteLossError', 'check_finite'),
    'groundwork.training.optim': ('make_optimizer', 'make_schedule'),
    'groundwork.training.precision': (
        'check_precision',
        'compute_dtype',
        'precision_record',
        'with_matmul_precision',
    ),
    'groundwork.training.preemption': ('Preempted', 'StopRequest'),
    'groundwork.training.rng': ('seed_key', 'step_rng'),
    'groundwork.training.state': ('TrainState',),
    'groundwork.training.workdir': (
        'SAFE_TO_CHANGE',
        'ConfigChanged',
        'NotFinished',
        'Run',
        'StorageError',
        'WorkdirBusy',
        'WorkdirError',
        'check_evaluable',
        'check_finished',
        'check_normalization',
        'check_space',
        'check_writable',
        'config_diff',
        'is_safe_to_change',
        'start_run',
        'storage_message',
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
