"""Host-to-device prefetching, so the device never waits for the next batch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import jax

_END = object()


class _Failure:

  def __init__(self, error: BaseException):
    self.error = error


def prefetch_to_device(
    batches: Iterable, size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> Iterator:
  """Yields `batches` put on device by a background thread, `size` batches ahead.

  Each batch (any pytree of arrays) goes through jax.device_put(batch, sharding).
  An error raised by `batches` is raised here at the point it occurred in the
  sequence. Closing the generator early stops the thread.
  """
  if size < 1:
    raise ValueError(f'size={size} must be at least 1.')
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
        if not put(jax.device_put(batch, sharding)):
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
