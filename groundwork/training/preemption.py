"""SIGTERM/SIGINT during training: finish the step, checkpoint, exit cleanly.

A pre-empted TPU or a Ctrl-C then costs nothing: the trainer sees `requested`
after the current step, writes a checkpoint and raises `Preempted`, whose
message says how to resume (the same command).
"""

import signal
import sys


class Preempted(SystemExit):
  """Raised after the checkpoint is written; exit status 0 would hide it, so 143 (SIGTERM)."""

  def __init__(self, step: int, directory: str):
    super().__init__(143)
    self.message = (
        f'Stopped by a signal at step {step}; checkpoint written to {directory}. '
        'Resume by running the same command again.'
    )

  def __str__(self) -> str:
    return self.message


class StopRequest:
  """Context manager that turns SIGTERM and SIGINT into a flag the loop polls."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(
        f'Received {signal.Signals(signum).name}: checkpointing after this step.',
        file=sys.stderr,
        flush=True,
    )

  def __enter__(self) -> 'StopRequest':
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals stay with the caller.
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def stop(self, step: int, directory: str) -> None:
    """Raises Preempted; call after writing the checkpoint."""
    print(Preempted(step, directory).message, file=sys.stderr, flush=True)
    raise Preempted(step, directory)
