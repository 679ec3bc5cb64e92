"""Training plumbing shared by both trainers."""
from groundwork.training.checkpoint import CheckpointMismatchError, Checkpointer
from groundwork.training.config_args import parse_args
from groundwork.training.files import read_json, save_config, write_json
from groundwork.training.mesh import (batch_sharding, check_batch_size, data_mesh, replicate,
                                      replicated_sharding, shard_batch)
from groundwork.training.metric_log import MetricLogger, NonFiniteLossError, check_finite
from groundwork.training.optim import make_optimizer, make_schedule
from groundwork.training.preemption import Preempted, StopRequest
from groundwork.training.rng import seed_key, step_rng
from groundwork.training.state import TrainState
