"""Orbax checkpoints: periodic, atomic, the last N kept, resumed automatically.

Orbax writes each step into a temporary folder and renames it when complete,
so a checkpoint being written when the process dies is never restored. A
latest checkpoint that cannot be read is reported and the one before it used.
"""

import os
from typing import Any

from absl import logging
import jax
from flax import serialization
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk belongs to another model or shape."""


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
    self._manager.save(int(step), args=ocp.args.StandardSave(item), force=force)
    self._manager.wait_until_finished()

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
