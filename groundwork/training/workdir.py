"""A workdir belongs to one run and one config: no two runs at once, no silent config change.

A trainer claims its workdir before reading any data (`start_run`):

- a lock (`run.lock`, an `fcntl.flock` held for the process's life, so a crash or SIGKILL
  releases it; the file also names the holder's pid, host and start time for the message):
  a second run on a busy workdir stops at once naming the other process; the lock left by
  a process that died is taken over, saying whose it was;
- a write probe: a read-only workdir stops at once, naming the path;
- the config check: a config that differs from the workdir's config.json in fields outside
  `SAFE_TO_CHANGE` stops, listing each field with both values, unless the run is started
  with `allow_config_change` (then the change is recorded in config_changes.json).

config.json itself is written by `Run.save_config`, which the trainer calls once every
check has passed, the checkpoint's compatibility included; `Run.finish` writes
finished.json, without which `check_evaluable` refuses to evaluate the workdir.
On several hosts only process 0 takes the lock and writes these files.
"""

import atexit
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import ml_collections

from groundwork.data.augment_spec import NORMALIZATION
from groundwork.training.files import plain, read_json, write_json

CONFIG_FILE = 'config.json'
MODEL_FILE = 'model.json'  # What groundwork.trained needs beyond the config to use the weights.
CHANGES_FILE = 'config_changes.json'
FINISHED_FILE = 'finished.json'
LOCK_FILE = 'run.lock'

# Fields a rerun may change without --allow_config_change: they change what is logged,
# saved, measured after training or where the same files are read, never the weights a
# run reaches. An entry covers its subfields ('eval' covers 'eval.n_way'). The few-shot
# `validation` settings are not here: they choose the kept checkpoint.
SAFE_TO_CHANGE = (
    'data_dir',
    'log_every_steps',
    'checkpoint',
    'eval',
    'eval_every_epochs',
    'eval_batch_size',
    'eval_retrieval',
    'data_on_device',
    'figures',
)
# Fields added after workdirs were trained, each with the value that trains as those runs
# did: absent from a saved config.json, such a field compares as this value.
ADDED_LATER = {'augment.color_jitter': 0.0}
# The fields that name how a workdir was trained, in the order a message gives them.
METHOD_FIELDS = ('trainer', 'method', 'head')
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as asked; the message says why and what to do.

  The launcher prints it as it is, without a traceback.
  """


class WorkdirBusy(WorkdirError):
  """Another live process holds the workdir's lock."""


class ConfigChanged(WorkdirError):
  """The config differs from the workdir's config.json outside SAFE_TO_CHANGE."""


class NotFinished(WorkdirError):
  """The workdir holds no finished run."""


class StorageError(WorkdirError):
  """A full disk or a read-only path."""


def _process_index() -> int:
  import jax  # pylint: disable=import-outside-toplevel  # The launcher parses flags without JAX.

  return jax.process_index()


def on_process_0(check: Callable[[], Any], what: str) -> None:
  """Runs `check` on process 0 alone (the lock, a space check). When it raises a
  WorkdirError, every process raises one, so none waits for process 0 in a collective that
  process 0 never reaches; the others' message names `what`."""
  import jax  # pylint: disable=import-outside-toplevel

  if jax.process_count() == 1:
    check()
    return
  from groundwork.training import distributed  # pylint: disable=import-outside-toplevel

  failure = None
  if jax.process_index() == 0:
    try:
      check()
    except WorkdirError as error:
      failure = error
  if distributed.from_process_0(failure is not None):
    raise failure or WorkdirError(f'{what} failed on process 0, whose message says why.')


# ----------------------------------------------------------------------------
# Storage: read-only paths and full disks as one line naming the path.
# ----------------------------------------------------------------------------
def storage_message(error: BaseException, path: str) -> str | None:
  """One actionable line for a full disk or a read-only path behind `error`, or None.

  Looks through the exception's causes and, for errors the checkpoint library raises
  with the OS error in their text, at that text.
  """
  path, seen = os.path.abspath(path), error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
      where = os.path.abspath(seen.filename) if seen.filename else path
      if seen.errno == errno.EACCES and not where.startswith(path):
        return None  # Not the run's own files (e.g. an unreadable data file).
      if seen.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full_message(where)
      return (
          f'{where} is not writable ({seen.strerror}): a run writes its checkpoints and results '
          'under its workdir; make it writable, or pass another --workdir '
          '(evaluation: --output=DIR).'
      )
    text = str(seen)
    if 'No space left on device' in text or "os_error_code='28'" in text:
      return _full_message(path)
    seen = seen.__cause__ or seen.__context__
  return None


def _full_message(path: str) -> str:
  free = _free_bytes(path)
  return (
      f'no space left on the device holding {path} ({_size(free)} free): free some '
      'space or move the workdir, then run the same command again; it resumes from the last '
      'complete checkpoint, which is intact.'
  )


def _size(num_bytes: int) -> str:
  return f'{num_bytes / 2**20:.1f} MiB' if num_bytes >= 2**20 else f'{num_bytes / 2**10:.0f} KiB'


def _free_bytes(path: str) -> int:
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    stat = os.statvfs(path or '.')
  except OSError:
    return 0
  return stat.f_bavail * stat.f_frsize


def check_space(directory: str, needed: int, what: str) -> None:
  """StorageError when `directory`'s device has less than `needed` bytes free for `what`."""
  free = _free_bytes(directory)
  if free < needed:
    raise StorageError(
        f'no space left for {what} in {directory}: {_size(free)} free, about '
        f'{_size(needed)} needed. Free some space or move the workdir, then run the '
        'same command again; it resumes from the last complete checkpoint, which is intact.'
    )


def check_writable(directory: str, what_to_do: str) -> None:
  """Creates `directory` if needed and writes a probe file into it, so a read-only or
  full directory stops the run before any work, with `what_to_do` in the message."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix='.write_probe') as probe:
      probe.write(b'probe')
      probe.flush()
  except OSError as error:
    if error.errno not in _STORAGE_ERRNOS:
      raise
    reason = 'no space left' if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
    raise StorageError(f'{directory} is not writable ({reason}): {what_to_do}') from None


# ----------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------
def _describe_holder(holder: dict) -> str:
  return (
      f'process {holder.get("pid", "?")} on {holder.get("host", "?")}, '
      f'started {holder.get("started", "at an unknown time")}'
  )


class WorkdirLock:
  """An exclusive lock on `workdir/run.lock`.

  `fcntl.flock` belongs to the open file, so the lock ends with the process however it
  ends; the file's JSON (pid, host, start time, command) only names the holder. The file
  is never deleted: a process that opened it just before a delete would lock a file no
  one else sees.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd: int | None = None
    self.taken_over: dict | None = None

  def _read(self, fd: int) -> dict:
    try:
      return json.loads(os.pread(fd, 65536, 0).decode() or '{}')
    except (ValueError, OSError):
      return {}

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirBusy; `taken_over` names a dead previous holder."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._read(fd)
      os.close(fd)
      raise WorkdirBusy(
          f'workdir {self.workdir} is in use by {_describe_holder(holder)} '
          f'({holder.get("command", "command unknown")}). Wait for it to end or stop it, '
          'or pass another --workdir.'
      ) from None
    except OSError as error:  # A filesystem without locks (some network mounts).
      os.close(fd)
      raise WorkdirError(
          f'cannot lock {self.path} ({error.strerror}): this filesystem does not support '
          'file locks; use a workdir on a local or lock-capable filesystem.'
      ) from None
    previous = self._read(fd)
    # The lock is free, so whoever is named in the file died without clearing it.
    self.taken_over = previous or None
    mine = {
        'pid': os.getpid(),
        'host': socket.gethostname(),
        'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'command': ' '.join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # A free lock names no one.
    except OSError:
      pass  # A full or read-only disk: the empty lock below still frees the workdir.
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


_HELD: dict[str, WorkdirLock] = {}


def _claim(workdir: str) -> WorkdirLock:
  """This process's lock on `workdir`; a second claim in the same process reuses it."""
  if workdir in _HELD:
    return _HELD[workdir]
  lock = WorkdirLock(workdir)
  lock.acquire()
  if lock.taken_over:
    print(
        f'Took over the lock of {lock.path}: {_describe_holder(lock.taken_over)}, '
        'no longer holds it (it ended without releasing it).',
        file=sys.stderr,
        flush=True,
    )
  _HELD[workdir] = lock
  return lock


def _release(workdir: str) -> None:
  lock = _HELD.pop(workdir, None)
  if lock is not None:
    lock.release()


@atexit.register
def _release_all() -> None:  # Exceptions and SystemExit (a signal's Preempted) come here too.
  for workdir in list(_HELD):
    _release(workdir)


# ----------------------------------------------------------------------------
# The config check.
# ----------------------------------------------------------------------------
def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f'{prefix}{key}.'))
    return flat
  return {prefix[:-1]: tree}


def config_as_json(config: ml_collections.ConfigDict | dict) -> dict:
  """What config.json holds for `config` (tuples as lists, numbers as JSON numbers)."""
  tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.loads(json.dumps(plain(tree)))


def config_diff(saved: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """`(field, saved value, new value)` for each leaf field that differs; a field absent
  from one side has the value `MISSING` there (from `saved`, one of `ADDED_LATER` has its
  value there)."""
  old, new = _flatten(config_as_json(saved)), _flatten(config_as_json(config))
  for field, value in ADDED_LATER.items():
    if field in new:
      old.setdefault(field, value)
  return [
      (field, old.get(field, MISSING), new.get(field, MISSING))
      for field in sorted(set(old) | set(new))
      if old.get(field, MISSING) != new.get(field, MISSING)
  ]


class _Missing:

  def __repr__(self) -> str:
    return '(absent)'


MISSING = _Missing()


def is_safe_to_change(field: str) -> bool:
  return any(field == safe or field.startswith(f'{safe}.') for safe in SAFE_TO_CHANGE)


def _show(value: Any) -> str:
  return repr(value) if value is MISSING else json.dumps(value)


def describe_diff(diff: list[tuple[str, Any, Any]], old_name: str, new_name: str) -> str:
  return '\n'.join(
      f'  config.{field}: {_show(old)} in {old_name}, {_show(new)} {new_name}'
      for field, old, new in diff
  )


def read_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  return read_json(path) if os.path.exists(path) else None


# ----------------------------------------------------------------------------
# A training run on its workdir.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """A claimed workdir: `save_config` once every check has passed, `finish` at the end."""

  workdir: str
  config: ml_collections.ConfigDict
  changes: list[tuple[str, Any, Any]]
  writes: bool  # Process 0 of a multi-host run.

  @property
  def retrains(self) -> bool:
    """Whether an accepted change goes beyond SAFE_TO_CHANGE (the finished run is no more)."""
    return any(not is_safe_to_change(field) for field, _, _ in self.changes)

  def save_config(self, model: dict | None = None) -> None:
    """Writes config.json, and `model` (groundwork.trained.describe_model) to model.json;
    an accepted change is appended to config_changes.json."""
    if not self.writes:
      return
    if self.changes:
      path = os.path.join(self.workdir, CHANGES_FILE)
      history = read_json(path) if os.path.exists(path) else []
      history.append(
          {
              'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
              'command': ' '.join(sys.argv),
              'changes': {
                  field: {
                      'old': None if old is MISSING else old,
                      'new': None if new is MISSING else new,
                  }
                  for field, old, new in self.changes
              },
          }
      )
      write_json(path, history)
      if self.retrains and os.path.exists(os.path.join(self.workdir, FINISHED_FILE)):
        os.remove(os.path.join(self.workdir, FINISHED_FILE))
    write_json(os.path.join(self.workdir, CONFIG_FILE), self.config.to_dict())
    if model is not None:
      write_json(os.path.join(self.workdir, MODEL_FILE), model)

  def finish(self, step: int) -> None:
    """Marks the run finished at `step` (what evaluation asks for) and frees the workdir."""
    if self.writes:
      write_json(
          os.path.join(self.workdir, FINISHED_FILE),
          {
              'trainer': self.config.get('trainer'),
              'step': int(step),
              'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          },
      )
    _release(self.workdir)


def start_run(
    workdir: str, config: ml_collections.ConfigDict, allow_config_change: bool = False
) -> Run:
  """Claims `workdir` for a run of `config`; call before reading any data.

  Raises:
    StorageError: the workdir cannot be created or written.
    WorkdirBusy: another live process runs in it.
    ConfigChanged: its config.json differs outside SAFE_TO_CHANGE and
      `allow_config_change` is false.
  """
  workdir = os.path.abspath(workdir)
  writes = _process_index() == 0
  check_writable(
      workdir, 'a run writes its checkpoints there; make it writable, or pass another --workdir.'
  )
  on_process_0(lambda: _claim(workdir), f'claiming workdir {workdir}')
  saved = read_config(workdir)
  changes = config_diff(saved, config) if saved is not None else []
  refused = [change for change in changes if not is_safe_to_change(change[0])]
  try:
    if refused and not allow_config_change:
      raise ConfigChanged(
          f'workdir {workdir} holds a run of another config; these fields differ from its '
          f'{CONFIG_FILE}:\n{describe_diff(refused, "the workdir", "now")}\n'
          "Run with the workdir's values, pass another --workdir, or pass --allow_config_change "
          f'to continue it with the new config (recorded in {CHANGES_FILE}).'
      )
    check_normalization(workdir, config.get('dataset'))
  except WorkdirError:  # A refused run leaves the workdir free.
    if writes:
      _release(workdir)
    raise
  if changes:
    allowed = 'allowed by --allow_config_change' if refused else 'fields safe to change'
    print(
        f'Config changes in {workdir} ({allowed}):\n'
        f'{describe_diff(changes, "the workdir", "now")}',
        file=sys.stderr,
        flush=True,
    )
  return Run(workdir, config, changes, writes)


# ----------------------------------------------------------------------------
# Evaluation of a finished workdir.
# ----------------------------------------------------------------------------
def finished_run(workdir: str) -> dict | None:
  """finished.json of `workdir` (trainer, step, time), or None if its run never finished."""
  path = os.path.join(workdir, FINISHED_FILE)
  return read_json(path) if os.path.exists(path) else None


def check_finished(workdir: str, field: str = '--workdir') -> dict:
  """finished.json of `workdir`, or NotFinished saying how to finish it."""
  finished = finished_run(workdir)
  if finished is None:
    raise NotFinished(
        f'{field}={workdir} holds no finished run (no {FINISHED_FILE}: its training stopped '
        'early, is still running, or finished before runs were marked). Run its train command '
        'again (same --config and --workdir): it resumes from the last checkpoint, and a '
        'run already at its last step only evaluates and marks itself finished.'
    )
  return finished


def _method(config: dict) -> str:
  named = [f'{f}={config[f]}' for f in METHOD_FIELDS if f in config]
  return ', '.join(named) or 'an unknown method'


def check_evaluable(workdir: str, config: ml_collections.ConfigDict | dict) -> None:
  """Whether `config` may evaluate `workdir`: the workdir holds a finished run of this
  method and of the same config outside SAFE_TO_CHANGE (evaluation settings, data_dir).

  Raises WorkdirError (NotFinished for an unfinished run) naming what differs.
  """
  saved = read_config(workdir)
  if saved is None:
    raise WorkdirError(
        f'--workdir={workdir} holds no {CONFIG_FILE}: it is not a workdir written by '
        'launch/train.py.'
    )
  config = config_as_json(config)
  if any(saved.get(f) != config.get(f) for f in METHOD_FIELDS):
    raise WorkdirError(
        f'--workdir={workdir} was trained by {_method(saved)}; the config describes '
        f'{_method(config)}. Omit --config to evaluate it with its own config.json.'
    )
  refused = [c for c in config_diff(saved, config) if not is_safe_to_change(c[0])]
  if refused:
    raise WorkdirError(
        f'the config does not describe the run in --workdir={workdir}; these fields differ '
        f'from its {CONFIG_FILE}:\n{describe_diff(refused, "the workdir", "in the config")}\n'
        "Evaluate with the workdir's own values (launch/evaluate.py --workdir=... alone "
        f'reads its config.json); only {", ".join(SAFE_TO_CHANGE)} may differ.'
    )
  check_normalization(workdir, config.get('dataset'))
  check_finished(workdir)


def check_normalization(workdir: str, dataset: str | None, field: str = '--workdir') -> None:
  """Raises WorkdirError when `workdir`'s model.json says its network was trained on inputs
  normalised otherwise than this code normalises `dataset` now (a changed
  `groundwork.data.augment_spec.NORMALIZATION`): its features would be computed on inputs it
  never saw. A workdir without model.json, or a dataset without an entry, passes."""
  path = os.path.join(workdir, MODEL_FILE)
  if dataset not in NORMALIZATION or not os.path.exists(path):
    return
  trained = read_json(path).get('normalization')
  mean, std = NORMALIZATION[dataset]
  now = {'mean': list(mean), 'std': list(std)}
  if trained is not None and trained != now:
    raise WorkdirError(
        f'{field}={workdir} was trained on {dataset} normalised with mean {trained["mean"]}, '
        f'std {trained["std"]} ({MODEL_FILE}); this code normalises {dataset} with mean '
        f'{now["mean"]}, std {now["std"]}, which the network never saw. Use the version of the '
        'code that trained it, or train it again in a new --workdir.'
    )
