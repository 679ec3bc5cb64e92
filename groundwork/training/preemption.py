"""SIGTERM/SIGINT during training: finish the step, checkpoint, exit cleanly.

A pre-empted TPU or a Ctrl-C then costs nothing: the trainer sees `requested`
after the current step, writes a checkpoint and raises `Preempted`, whose
message says how to resume (the same command).

With several processes a signal reaches each at its own step (or only one of them), while
the checkpoint is a collective: every `SYNC_EVERY` polls the processes agree (one tiny
all-gather), so all see `requested` at the same poll and checkpoint the same step.
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
  SYNC_EVERY = 20  # Polls (steps) between the processes' agreements.

  def __init__(self):
    self.signalled = False
    self._agreed = False
    self._polls = 0
    self._previous = {}

  @property
  def requested(self) -> bool:
    """Whether to checkpoint and stop now; every process must poll at the same points."""
    import jax  # pylint: disable=import-outside-toplevel  # Loaded by the trainer already.

    if jax.process_count() == 1 or self._agreed:
      return self.signalled or self._agreed
    self._polls += 1
    if self._polls % self.SYNC_EVERY == 0:
      from groundwork.training import distributed  # pylint: disable=import-outside-toplevel

      self._agreed = distributed.any_process(self.signalled)
    return self._agreed

  def _handle(self, signum, frame):
    del frame
    self.signalled = True
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
