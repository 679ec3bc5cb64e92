"""Which trainer runs a config, and the command line both launch scripts share.

The two projects never import each other and the shared package imports
neither; the launcher is the one place that knows both, by the module each
config names in `config.trainer`.
"""
import importlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from groundwork import host_memory

TRAINERS = {'fsl': 'fsl.train', 'fsl_implanting': 'fsl.train_implanting',
            'ssl': 'semisup.train'}


def trainer_module(config):
  if config.trainer not in TRAINERS:
    raise ValueError(f'config.trainer={config.trainer!r} is not one of {list(TRAINERS)}.')
  return importlib.import_module(TRAINERS[config.trainer])


def launch(entry_point: str, workdir_help: str) -> None:
  """Parses --config and --workdir, then calls `<trainer>.<entry_point>(config, workdir)`."""
  # Before JAX starts: the allocator is chosen when a process starts (see host_memory).
  host_memory.reexec_with_fast_allocator()
  config = config_flags.DEFINE_config_file('config', None, 'Config file (path[:args]).',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    getattr(trainer_module(config.value), entry_point)(config.value, workdir.value)

  app.run(main)
