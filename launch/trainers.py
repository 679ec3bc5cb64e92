"""Which trainer runs a config, and the command lines of the launch scripts.

The two projects never import each other and the shared package imports
neither; the launcher is the one place that knows both, by the module each
config names in `config.trainer`. A trainer (JAX, Flax, Orbax) is imported only
once the flags parse, so --help and a mistyped flag answer at once.

A workdir the run cannot use (busy, another config, unfinished, read-only, a
full disk) stops with the one message that says why and what to do, without a
traceback.

Started as several processes (hosts), each launch joins JAX's distributed runtime before
anything touches a device: from --coordinator_address, --num_processes and --process_id,
else the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, a SLURM
step of several tasks, Open MPI, a Cloud TPU VM); docs/multihost.md.
"""

import difflib
import importlib
import json
import os
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


def flag_value(argv, name: str) -> str | None:
  """The value of `--name=value` or `--name value` in argv, before absl parses it."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def flags_parser(base_config):
  """absl's parsing, except that an unknown --config.field is one line, not a traceback.

  `base_config()` gives the config the overrides apply to.
  """

  def parse(argv):
    try:
      return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):  # What ml_collections raises for a missing field.
      config = base_config(argv)
      message = config is not None and unknown_field(config, argv)
      if not message:
        raise
      _flag_error(message)

  return parse


def _flag_error(message: str) -> None:
  sys.stderr.write(
      f'FATAL Flags parsing error: {message}\n'
      'Pass --helpshort or --helpfull to see help on flags.\n'
  )
  sys.exit(1)


def _config_file(argv):
  # The config loaded fine before the override failed: load it again to find the field.
  spec = flag_value(argv, 'config')
  return spec and flags.FLAGS['config'].parser.parse(spec)


def _fatal_on_workdir_errors(fn, path: str) -> None:
  """Runs `fn`; a workdir the run cannot use, or a full or read-only disk, is one line."""
  from groundwork import training  # pylint: disable=import-outside-toplevel

  try:
    fn()
  except training.WorkdirError as error:
    sys.stderr.write(f'FATAL {error}\n')
    sys.exit(1)
  except Exception as error:  # pylint: disable=broad-except  # Orbax wraps OS errors.
    message = training.storage_message(error, path)
    if message is None:
      raise
    sys.stderr.write(f'FATAL {message}\n')
    sys.exit(1)


def _quiet_logs() -> None:
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.


def define_distributed_flags():
  """The flags that make this launch one of several processes; returns the function that
  starts JAX's distributed runtime from them (or the environment) once they parse."""
  address = flags.DEFINE_string(
      'coordinator_address',
      None,
      "HOST:PORT of process 0's coordinator (a free port), the same for every process; "
      'default $JAX_COORDINATOR_ADDRESS or what SLURM, Open MPI or the TPU VM says.',
  )
  count = flags.DEFINE_integer(
      'num_processes', None, 'Processes of the run (default $JAX_NUM_PROCESSES).', lower_bound=1
  )
  index = flags.DEFINE_integer(
      'process_id',
      None,
      "This process's index, 0 to num_processes - 1 (default $JAX_PROCESS_ID).",
      lower_bound=0,
  )

  def initialize() -> None:
    from groundwork.training import distributed  # pylint: disable=import-outside-toplevel

    try:
      distributed.initialize_from_env_or_flags(address.value, count.value, index.value)
    except ValueError as error:
      _flag_error(str(error))

  return initialize


def define_compilation_cache_flag():
  """The --compilation_cache flag; returns the function that turns the cache on from it."""
  from groundwork.training import compilation_cache  # pylint: disable=import-outside-toplevel

  directory = flags.DEFINE_string(
      'compilation_cache',
      compilation_cache.default_directory(),
      'Folder that keeps compiled programs between runs, so a resumed run, an evaluation or '
      'a rerun of the same shapes skips compiling; empty turns it off.',
  )
  return lambda: compilation_cache.enable(directory.value)


def launch_train() -> None:
  """`<trainer>.train_and_evaluate(config, workdir, allow_config_change=...)`."""
  config = config_flags.DEFINE_config_file(
      'config', None, 'Config file (path[:args]).', lock_config=True
  )
  workdir = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
  allow_change = flags.DEFINE_bool(
      'allow_config_change',
      False,
      'Continue a workdir whose config.json differs from this config beyond the fields safe '
      'to change (groundwork.training.SAFE_TO_CHANGE); the change is recorded in the '
      "workdir's config_changes.json.",
  )
  flags.mark_flags_as_required(['config', 'workdir'])
  start_processes = define_distributed_flags()
  start_cache = define_compilation_cache_flag()

  def main(argv):
    del argv
    _quiet_logs()
    start_cache()
    start_processes()
    trainer = trainer_module(config.value)
    _fatal_on_workdir_errors(
        lambda: trainer.train_and_evaluate(
            config.value, workdir.value, allow_config_change=allow_change.value
        ),
        workdir.value,
    )

  app.run(main, flags_parser=flags_parser(_config_file))


def _saved_config(workdir: str | None) -> ml_collections.ConfigDict:
  path = os.path.join(workdir or '', 'config.json')
  if not workdir or not os.path.exists(path):
    return ml_collections.ConfigDict()  # Refused after parsing, naming the workdir.
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def launch_evaluate() -> None:
  """`<trainer>.evaluate(config, workdir, output_dir=...)` on a finished workdir.

  The config is the workdir's config.json, where `--config.field=value` may change a field
  safe to change (evaluation settings, data_dir); a `--config=file` must describe the same
  run. The results go to `--output`, else the workdir.
  """
  workdir = flags.DEFINE_string(
      'workdir', None, 'A finished workdir of launch/train.py (config.json, checkpoints).'
  )
  output = flags.DEFINE_string(
      'output',
      None,
      'Directory for results.json and the per-episode accuracies (default: the workdir); '
      'for a read-only or shared workdir.',
  )
  flags.mark_flags_as_required(['workdir'])
  start_processes = define_distributed_flags()
  start_cache = define_compilation_cache_flag()
  if flag_value(sys.argv, 'config') is not None:
    config = config_flags.DEFINE_config_file(
        'config',
        None,
        "Config file (path[:args]); it must describe the workdir's run (default: its "
        'config.json).',
        lock_config=True,
    )
    base_config = _config_file
  else:
    saved = _saved_config(flag_value(sys.argv, 'workdir'))
    message = saved and unknown_field(saved, sys.argv)
    if message:  # A config dict flag applies the overrides as it is defined.
      _flag_error(message)
    config = config_flags.DEFINE_config_dict(
        'config', saved, "The workdir's config.json; --config.field=value changes a field."
    )
    base_config = lambda argv: saved

  def main(argv):
    del argv
    _quiet_logs()
    start_cache()
    start_processes()
    from groundwork import training  # pylint: disable=import-outside-toplevel

    out = output.value or workdir.value

    def evaluate():
      training.check_evaluable(workdir.value, config.value)
      training.check_writable(
          out,
          'pass --output=DIR to write the results elsewhere.'
          if out == workdir.value
          else 'pass another --output.',
      )
      trainer_module(config.value).evaluate(config.value, workdir.value, output_dir=out)

    _fatal_on_workdir_errors(evaluate, out)

  app.run(main, flags_parser=flags_parser(base_config))
