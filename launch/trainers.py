"""Which trainer runs a config, and the command line both launch scripts share.

The two projects never import each other and the shared package imports
neither; the launcher is the one place that knows both, by the module each
config names in `config.trainer`. A trainer (JAX, Flax, Orbax) is imported only
once the flags parse, so --help and a mistyped flag answer at once.
"""

import difflib
import importlib
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

TRAINERS = {'fsl': 'fsl.train', 'fsl_implanting': 'fsl.train_implanting', 'ssl': 'semisup.train'}


def trainer_module(config):
  if config.trainer not in TRAINERS:
    raise ValueError(f'config.trainer={config.trainer!r} is not one of {list(TRAINERS)}.')
  return importlib.import_module(TRAINERS[config.trainer])


def unknown_field(config, argv) -> str | None:
  """Why the first `--config.a.b=...` of argv names no field of `config`, or None."""
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg.removeprefix('--config.').partition('=')[0]
    node, parents = config, []
    for part in path.split('.'):
      part = part.partition('[')[0]  # `shots[0]` indexes the field `shots`.
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, fields, n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else '.'
        where = f'config.{".".join(parents)}' if parents else 'the config'
        return f'flag --config.{path}: {where} has no field {part!r}{hint}'
      node = node[part]
      parents.append(part)
  return None


def parse_flags(argv):
  """absl's parsing, except that an unknown --config.field is one line, not a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):  # What ml_collections raises for a missing field.
    # The config loaded fine before the override failed: load it again to find the field.
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    message = spec and unknown_field(flags.FLAGS['config'].parser.parse(spec), argv)
    if not message:
      raise
    sys.stderr.write(
        f'FATAL Flags parsing error: {message}\n'
        'Pass --helpshort or --helpfull to see help on flags.\n'
    )
    sys.exit(1)


def launch(entry_point: str, workdir_help: str) -> None:
  """Parses --config and --workdir, then calls `<trainer>.<entry_point>(config, workdir)`."""
  config = config_flags.DEFINE_config_file(
      'config', None, 'Config file (path[:args]).', lock_config=True
  )
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    getattr(trainer_module(config.value), entry_point)(config.value, workdir.value)

  app.run(main, flags_parser=parse_flags)
