"""Trains (and evaluates) one config into a workdir.

  python launch/train.py --config=configs/fsl/dense_classification.py:dataset=omniglot \
      --workdir=workdirs/omniglot_dc [--config.field=value ...]

A workdir that already holds a checkpoint is resumed from it.
"""
from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from trainers import trainer_module

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
  trainer_module(_CONFIG.value).train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
