"""Evaluates the checkpoint of a trained workdir and rewrites its results.json.

  python launch/evaluate.py --config=configs/fsl/dense_classification.py:dataset=omniglot \
      --workdir=workdirs/omniglot_dc
"""
from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from trainers import trainer_module

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Trained workdir holding checkpoints/.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
  trainer_module(_CONFIG.value).evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
