"""Metrics: TensorBoard event files plus one readable stdout line per log step.

The event files are written with tensorboard's own record writer and protos,
which need no TensorFlow. tensorboard's EventFileWriter is not used: its
constructor goes through `tensorboard.compat.tf`, which imports TensorFlow
(seconds) whenever it is installed. For the same reason `read_scalars` reads
the records back itself rather than with tensorboard's event loaders.
"""

import glob
import itertools
import os
import socket
import struct
import time

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

# Two writers opened within the same second in one process still get two files.
_file_ids = itertools.count()


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


def check_finite(loss: float, step: int, checkpoint_dir: str | None = None) -> None:
  if not np.isfinite(loss):
    where = f' The last good checkpoint is in {checkpoint_dir}.' if checkpoint_dir else ''
    raise NonFiniteLossError(
        f'loss is {loss} at step {step}: training stopped.{where} '
        'Lower optim.lr or check the input data.'
    )


class EventFile:
  """One TensorBoard event file in `logdir`, named as TensorBoard expects."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (
        f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
        f'{os.getpid()}.{next(_file_ids)}'
    )
    # Open for the run's life; every write is flushed (MetricLogger), so no close is needed.
    self._records = RecordWriter(open(os.path.join(logdir, name), 'wb'))
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    self.flush()

  def _write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    values = [
        summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()
    ]
    self._write(
        event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
    )

  def write_image(self, step: int, tag: str, png: bytes) -> None:
    """A PNG-encoded image, shown in TensorBoard's images dashboard under `tag`."""
    width, height = png_size(png)
    image = summary_pb2.Summary.Image(
        height=height, width=width, colorspace=4, encoded_image_string=png  # 4: RGBA.
    )
    self._write(
        event_pb2.Event(
            wall_time=time.time(),
            step=step,
            summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]),
        )
    )

  def flush(self) -> None:
    self._records.flush()


def png_size(png: bytes) -> tuple[int, int]:
  """(width, height) from a PNG's header chunk."""
  if png[:8] != b'\x89PNG\r\n\x1a\n' or png[12:16] != b'IHDR':
    raise ValueError('not a PNG image: an image summary takes PNG-encoded bytes.')
  return struct.unpack('>II', png[16:24])


def _records(path: str):
  """The records of one event file; a record cut short (a killed writer) ends it."""
  with open(path, 'rb') as f:
    data = f.read()
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[offset : offset + 8])
    if offset + 16 + length > len(data):
      return
    yield data[offset + 12 : offset + 12 + length]
    offset += 16 + length


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Every scalar the event files directly in `logdir` hold: tag -> [(step, value)] by step.

  A step logged twice (a resumed run re-logs the steps after its last checkpoint) keeps
  its last written value.
  """
  written = []
  for path in glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
    for record in _records(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.WhichOneof('value') == 'simple_value':
          written.append((event.wall_time, value.tag, event.step, value.simple_value))
  curves: dict[str, dict[int, float]] = {}
  for _, tag, step, value in sorted(written, key=lambda w: w[0]):
    curves.setdefault(tag, {})[step] = value
  return {tag: sorted(points.items()) for tag, points in sorted(curves.items())}


class MetricLogger:
  """Writes scalars to TensorBoard and prints `step, loss, lr, steps/s, ETA`.

  Only process 0 writes and prints; the others' calls do nothing. Tags are
  `<prefix>/<name>` (`train/loss`); `log_results` names its own prefix
  (`test/5way_1shot_accuracy`).
  """

  def __init__(self, workdir: str, total_steps: int, prefix: str = 'train'):
    self._writes = jax.process_index() == 0
    self._events = EventFile(workdir) if self._writes else None
    self._total = total_steps
    self._prefix = prefix
    self._last_time = None
    self._last_step = None

  def log(self, step: int, scalars: dict) -> None:
    """Training progress: `scalars` plus steps/s since the previous call, and the ETA."""
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.perf_counter()
    if self._last_time is not None and step > self._last_step:
      rate = (step - self._last_step) / (now - self._last_time)
      scalars['steps_per_sec'] = rate
      eta = (self._total - step) / rate if rate > 0 else float('inf')
    else:
      eta = None
    self._last_time, self._last_step = now, step
    eta_text = f' eta={eta / 60:.1f}min' if eta is not None else ''
    self._emit(step, self._prefix, scalars, eta_text)

  def log_results(self, step: int, scalars: dict, prefix: str) -> None:
    """Evaluation results at `step`, tagged `<prefix>/<name>`; no rate, no ETA.

    The evaluation's time does not count into the next steps/s, which measures
    training alone.
    """
    self._emit(step, prefix, {k: float(v) for k, v in scalars.items()}, '')
    if self._last_time is not None:
      self._last_time, self._last_step = time.perf_counter(), step

  def log_image(self, step: int, name: str, png: bytes) -> None:
    """A PNG image at `step`, tagged `<prefix>/<name>`, written through like the scalars."""
    if self._writes:
      self._events.write_image(step, f'{self._prefix}/{name}', png)
      self._events.flush()

  def _emit(self, step: int, prefix: str, scalars: dict, suffix: str) -> None:
    if not self._writes:
      return
    self._events.write_scalars(step, {f'{prefix}/{k}': v for k, v in scalars.items()})
    # Each call is written through, so a killed or preempted run keeps its curves; calls
    # are tens of steps apart.
    self._events.flush()
    text = ' '.join(f'{k}={v:.4g}' for k, v in scalars.items())
    print(f'[{prefix}] step {step}/{self._total} {text}{suffix}', flush=True)

  def flush(self) -> None:
    if self._writes:
      self._events.flush()
