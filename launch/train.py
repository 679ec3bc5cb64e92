r"""Trains (and evaluates) one config into a workdir.

  python launch/train.py --config=configs/fsl/dense_classification.py:dataset=omniglot \
      --workdir=workdirs/omniglot_dc [--config.field=value ...]

A workdir that already holds a checkpoint is resumed from it, if its config.json
describes the same run (fields safe to change aside): another config stops, naming
each field, unless --allow_config_change. A misspelt --config.field stops naming the
field; a workdir in use by another run stops naming that run.

Several processes (hosts, or one per GPU) train one run when started by SLURM's srun, on
a TPU pod slice, or with --coordinator_address, --num_processes and --process_id:
docs/multihost.md.
"""

from trainers import launch_train

if __name__ == '__main__':
  launch_train()
