"""The training input path, so the device never waits for the next batch.

A trainer's batches are rows of its training arrays picked by index arrays (an epoch's
order, two-stream batches). `gathered_batches` hands them out already on the devices, by one
of two routes that give the same values:

- resident: the arrays were put on the devices once (`keep_on_device`); only each batch's
  indices travel, and one jitted gather assembles the batch there;
- host: a background thread gathers each batch on the host and puts it on the devices
  (`prefetch_to_device`), a few batches ahead of the step that takes it.

`config.data_on_device` chooses: 'yes', 'no', or 'auto', resident when the arrays take at
most `DEVICE_MEMORY_FRACTION` of the smallest device's memory (miniImageNet's uint8 training
images are 813 MB, CIFAR's 150 MB) and one process reads all the data. A CPU reports no
memory limit: there the arrays are resident too, so the route accelerators take is the one
tested.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

DATA_ON_DEVICE = ('auto', 'yes', 'no')
# Of the smallest local device's memory, what 'auto' lets the training arrays take; the rest
# is for the model, its activations and the evaluation's features.
DEVICE_MEMORY_FRACTION = 0.25

_END = object()


class _Failure:

  def __init__(self, error: BaseException):
    self.error = error


def prefetch_to_device(
    batches: Iterable,
    size: int = 2,
    sharding: jax.sharding.Sharding | None = None,
    place: Callable[[Any], Any] | None = None,
) -> Iterator:
  """Yields `batches` put on device by a background thread, `size` batches ahead.

  Each batch (any pytree of arrays) goes through `place(batch)`, by default
  jax.device_put(batch, sharding). An error raised by `batches` is raised here at the
  point it occurred in the sequence. Closing the generator early stops the thread.
  """
  if size < 1:
    raise ValueError(f'size={size} must be at least 1.')
  place = place or (lambda batch: jax.device_put(batch, sharding))
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for batch in batches:
        if not put(place(batch)):
          return
      put(_END)
    except BaseException as e:  # Handed to the consumer, which re-raises it.
      put(_Failure(e))

  thread = threading.Thread(target=produce, daemon=True, name='prefetch_to_device')
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is _END:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)


def check_data_on_device(setting: str) -> None:
  """Raises ValueError naming `config.data_on_device` unless it is one of DATA_ON_DEVICE."""
  if setting not in DATA_ON_DEVICE:
    raise ValueError(
        f'config.data_on_device={setting!r} is not one of {list(DATA_ON_DEVICE)}: '
        "'auto' keeps the training images on the accelerator where they fit."
    )


def fits_on_device(nbytes: int, fraction: float = DEVICE_MEMORY_FRACTION) -> bool:
  """Whether `nbytes` take at most `fraction` of the smallest local device's memory; a
  device that reports no limit (a CPU: the host's memory) holds them."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  limits = [s['bytes_limit'] for s in stats if s and 'bytes_limit' in s]
  return not limits or nbytes <= fraction * min(limits)


def keep_on_device(setting: str, nbytes: int) -> bool:
  """Whether training arrays of `nbytes` stay on the devices under `config.data_on_device`.

  'yes' needs a single process: every device then gathers from a full copy, while several
  processes each read only their share of the data.
  """
  check_data_on_device(setting)
  if jax.process_count() > 1:
    if setting == 'yes':
      raise ValueError(
          f"config.data_on_device='yes' with {jax.process_count()} processes: each reads "
          "only its share of the data; use 'auto' or 'no'."
      )
    return False
  return setting == 'yes' or (setting == 'auto' and fits_on_device(nbytes))


@jax.jit
def _gather(arrays: tuple[jax.Array, ...], idx: jax.Array) -> tuple[jax.Array, ...]:
  # Replicated arrays and indices split over the data axis: each device gathers its rows.
  return tuple(a[idx] for a in arrays)


def gathered_batches(
    arrays: Sequence[np.ndarray | jax.Array],
    index_batches: Iterable[np.ndarray],
    place: Callable[[Any], Any],
    ahead: int = 2,
) -> Iterator[tuple]:
  """`tuple(a[idx] for a in arrays)` on the devices, for each `idx` of `index_batches`.

  `place` puts a host pytree on the devices split along its first axis (the trainer's
  `training.shard_batch` with its mesh). Arrays already on the devices (all of them
  `jax.Array`s, replicated) are gathered there from the placed indices; host arrays are
  gathered on the host and placed by a background thread, `ahead` batches in advance.
  """
  arrays = tuple(arrays)
  on_device = [isinstance(a, jax.Array) for a in arrays]
  if any(on_device) and not all(on_device):
    raise ValueError('gathered_batches: put every array on the devices, or none of them.')
  if all(on_device):
    for idx in index_batches:
      yield _gather(arrays, place(np.asarray(idx)))
  else:
    host = (tuple(np.asarray(a)[idx] for a in arrays) for idx in index_batches)
    yield from prefetch_to_device(host, ahead, place=place)
