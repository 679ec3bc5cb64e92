"""Which trainer runs a config.

The two projects never import each other and the shared package imports
neither; the launcher is the one place that knows both, by the module each
config names in `config.trainer`.
"""
import importlib

TRAINERS = {'fsl': 'fsl.train', 'fsl_implanting': 'fsl.train_implanting',
            'ssl': 'semisup.train'}


def trainer_module(config):
  if config.trainer not in TRAINERS:
    raise ValueError(f'config.trainer={config.trainer!r} is not one of {list(TRAINERS)}.')
  return importlib.import_module(TRAINERS[config.trainer])
