"""Orbax checkpoints: periodic, atomic, the last N kept, resumed automatically.

Orbax writes each step into a temporary folder and renames it when complete,
so a checkpoint being written when the process dies is never restored. A
latest checkpoint that cannot be read is reported and the one before it used.
A save that would not fit on the disk, or fails on a full or read-only one,
stops with one line naming the directory; the last complete checkpoint stays.

With several processes every process calls `save` and `restore` with the same steps:
Orbax writes each array's shards from a process that holds them and process 0 the
metadata, into a directory all processes share (NFS, a cluster filesystem). Process 0
alone checks the free space and clears a failed save's folder; the others stop with it.
"""

import contextlib
import glob
import os
import shutil
import sys
import threading
import types
from typing import Any

from absl import logging
import jax
from flax import serialization
import numpy as np
import orbax.checkpoint as ocp

from groundwork.training.workdir import (
    StorageError,
    WorkdirError,
    check_space,
    on_process_0,
    storage_message,
)

# Room kept beyond a checkpoint's own size: Orbax's metadata and the log files.
_SPARE_BYTES = 2**20


class CheckpointMismatchError(ValueError, WorkdirError):
  """The checkpoint on disk belongs to another model or shape (the launcher prints it as
  one line: the message names the checkpoint and what to do)."""


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shape_summary(tree) -> dict:
  """'state/params/Dense_0/kernel' -> shape, for templates and saved metadata alike."""
  leaves = jax.tree_util.tree_leaves_with_path(serialization.to_state_dict(tree))
  return {
      '/'.join(_key_name(e) for e in path): tuple(getattr(leaf, 'shape', np.shape(leaf)))
      for path, leaf in leaves
  }


def _explain_mismatch(saved_meta, template) -> str:
  saved = _shape_summary(saved_meta)
  wanted = _shape_summary(template)
  missing = sorted(set(wanted) - set(saved))[:3]
  extra = sorted(set(saved) - set(wanted))[:3]
  shapes = [
      f'{k}: saved {saved[k]} vs model {wanted[k]}'
      for k in sorted(set(saved) & set(wanted))
      if saved[k] != wanted[k]
  ][:3]
  parts = []
  if missing:
    parts.append(f'missing in checkpoint: {missing}')
  if extra:
    parts.append(f'not in this model: {extra}')
  if shapes:
    parts.append(f'shape differs: {shapes}')
  return '; '.join(parts)


@contextlib.contextmanager
def _held_stderr():
  """Collects what anything in the process (Python or C++) writes to file descriptor 2
  inside the block; the text is in `held.text` after it."""
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  original = os.dup(2)
  chunks = []

  def drain():
    while chunk := os.read(read_end, 65536):
      chunks.append(chunk)
    os.close(read_end)

  reader = threading.Thread(target=drain, daemon=True)  # A full pipe would block writers.
  reader.start()
  os.dup2(write_end, 2)
  os.close(write_end)
  held = types.SimpleNamespace(text='')
  try:
    yield held
  finally:
    sys.stderr.flush()
    os.dup2(original, 2)  # Closes the pipe's last write end: the reader sees its end.
    os.close(original)
    reader.join()
    held.text = b''.join(chunks).decode(errors='replace')


class Checkpointer:
  """Saves `{'state': TrainState, 'extra': pytree}` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, subdir: str = 'checkpoints'):
    self.directory = os.path.join(os.path.abspath(workdir), subdir)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, extra: Any = None, force: bool = True) -> None:
    """Writes step `step`; a step already on disk is kept as it is (a resumed
    run re-reaching it holds the same state, since every draw follows the seed)."""
    if int(step) in self._manager.all_steps():
      return
    item = {'state': state, 'extra': extra if extra is not None else {}}
    on_process_0(
        lambda: check_space(self.directory, self._size_estimate(item), f'checkpoint step {step}'),
        f'the space check of checkpoint step {step}',
    )
    failure = None
    # A save that fails half-way has Orbax's threads print hundreds of lines of tracebacks:
    # held back, and shown only when the failure is not the full or read-only disk that
    # the one-line message below names.
    with _held_stderr() as held:
      try:
        self._manager.save(int(step), args=ocp.args.StandardSave(item), force=force)
        self._manager.wait_until_finished()
      except Exception as error:  # pylint: disable=broad-except  # Orbax wraps OS errors.
        failure = error
    message = failure and storage_message(failure, self.directory)
    if not message:
      sys.stderr.write(held.text)
      if failure is not None:
        raise failure
      return
    if jax.process_index() == 0:
      for partial in glob.glob(os.path.join(self.directory, f'{int(step)}.orbax-checkpoint-tmp*')):
        shutil.rmtree(partial, ignore_errors=True)  # Never restored; frees the room it took.
    raise StorageError(f'checkpoint step {step} was not written: {message}') from None

  def _size_estimate(self, item) -> int:
    """Bytes the next save needs: the newest checkpoint's size on disk, or the arrays' size."""
    arrays = sum(
        int(getattr(leaf, 'nbytes', 0))
        for leaf in jax.tree.leaves(serialization.to_state_dict(item))
    )
    latest = self._manager.latest_step()
    on_disk = 0
    if latest is not None:
      for root, _, files in os.walk(os.path.join(self.directory, str(latest))):
        on_disk += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return max(arrays, on_disk) + _SPARE_BYTES

  def restore(self, state_template, extra_template: Any = None, step: int | None = None):
    """Returns `(state, extra, step)` of the newest readable checkpoint, or None.

    Raises CheckpointMismatchError when the checkpoint holds another model.
    """
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    template = {
        'state': state_template,
        'extra': extra_template if extra_template is not None else {},
    }
    for candidate in steps:
      try:
        saved = self._manager.item_metadata(candidate)
        if saved is None:
          raise ValueError('no metadata')
      except Exception as err:  # Truncated or corrupt: fall back to an older one.
        logging.warning(
            'checkpoint %s/%s is unreadable (%s); trying an older one.',
            self.directory,
            candidate,
            err,
        )
        continue
      mismatch = _explain_mismatch(dict(saved), template)
      if mismatch:
        raise CheckpointMismatchError(
            f'checkpoint {self.directory}/{candidate} was written by another model '
            f'or shape ({mismatch}). Use a new --workdir, or the config that wrote it.'
        )
      try:
        item = self._manager.restore(candidate, args=ocp.args.StandardRestore(template))
      except Exception as err:
        logging.warning(
            'checkpoint %s/%s is unreadable (%s); trying an older one.',
            self.directory,
            candidate,
            err,
        )
        continue
      return item['state'], item['extra'], candidate
    return None

  def close(self) -> None:
    self._manager.close()
