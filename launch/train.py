r"""Trains (and evaluates) one config into a workdir.

  python launch/train.py --config=configs/fsl/dense_classification.py:dataset=omniglot \
      --workdir=workdirs/omniglot_dc [--config.field=value ...]

A workdir that already holds a checkpoint is resumed from it; a misspelt
--config.field stops naming the field.
"""

from trainers import launch

if __name__ == '__main__':
  launch('train_and_evaluate', 'Directory for checkpoints and results.')
