"""MetricLogger: TensorBoard event files read back record by record, the stdout line, process 0."""

import pathlib
import struct
import sys

import jax
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from groundwork import training
from groundwork.training import metric_log


def read_events(path: pathlib.Path) -> list[event_pb2.Event]:
  """The events of one file, checking the TFRecord framing and both checksums."""
  data, events, offset = path.read_bytes(), [], 0
  while offset < len(data):
    header = data[offset : offset + 8]
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', data[offset + 8 : offset + 12])
    assert header_crc == masked_crc32c(header)
    body = data[offset + 12 : offset + 12 + length]
    (body_crc,) = struct.unpack('<I', data[offset + 12 + length : offset + 16 + length])
    assert body_crc == masked_crc32c(body)
    events.append(event_pb2.Event.FromString(body))
    offset += 16 + length
  return events


def scalars_of(events) -> list[tuple[str, int, float]]:
  return [
      (v.tag, e.step, v.simple_value)
      for e in events
      if e.HasField('summary')
      for v in e.summary.value
  ]


def test_scalars_read_back_with_tags_steps_and_values(tmp_path, capsys):
  logger = training.MetricLogger(str(tmp_path), total_steps=100)
  logger.log(10, {'loss': 2.5, 'lr': 0.125})
  logger.log(20, {'loss': 1.25, 'lr': 0.0625})
  logger.log_results(20, {'5way_1shot_accuracy': 0.75}, prefix='val')
  logger.flush()

  (path,) = tmp_path.glob('events.out.tfevents.*')
  events = read_events(path)
  assert events[0].file_version == 'brain.Event:2'
  got = scalars_of(events)
  assert [(tag, step) for tag, step, _ in got] == [
      ('train/loss', 10),
      ('train/lr', 10),
      ('train/loss', 20),
      ('train/lr', 20),
      ('train/steps_per_sec', 20),
      ('val/5way_1shot_accuracy', 20),
  ]
  values = {(tag, step): value for tag, step, value in got}
  # Exact in float32, the precision of simple_value.
  assert values[('train/loss', 10)] == 2.5 and values[('train/lr', 20)] == 0.0625
  assert values[('val/5way_1shot_accuracy', 20)] == 0.75
  assert values[('train/steps_per_sec', 20)] > 0

  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == '[train] step 10/100 loss=2.5 lr=0.125'
  assert lines[1].startswith('[train] step 20/100 loss=1.25 lr=0.0625 steps_per_sec=')
  assert lines[1].endswith('min') and ' eta=' in lines[1]
  assert lines[2] == '[val] step 20/100 5way_1shot_accuracy=0.75'


def test_tensorboard_reads_the_file_without_tensorflow(tmp_path, monkeypatch):
  # The reader TensorBoard's scalar dashboard uses; blocking TensorFlow makes it take its
  # pure-Python fallback, as it would where the extra is not installed.
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  logger = training.MetricLogger(str(tmp_path), total_steps=4)
  logger.log(2, {'loss': 0.5})
  logger.log_results(4, {'lake_oneshot_error': 0.25}, prefix='test')
  accumulator = event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert [(s.step, s.value) for s in accumulator.Scalars('train/loss')] == [(2, 0.5)]
  assert [(s.step, s.value) for s in accumulator.Scalars('test/lake_oneshot_error')] == [(4, 0.25)]


def test_each_call_reaches_the_file_before_flush(tmp_path):
  # A killed run keeps what it logged.
  logger = training.MetricLogger(str(tmp_path), total_steps=5, prefix='mt')
  logger.log(1, {'loss': 3.0})
  (path,) = tmp_path.glob('events.out.tfevents.*')
  assert scalars_of(read_events(path)) == [('mt/loss', 1, 3.0)]


def test_two_loggers_in_one_workdir_write_two_files(tmp_path):
  # The semi-supervised trainer opens one logger per stage in the same workdir.
  for prefix in ('supervised', 'dlp'):
    training.MetricLogger(str(tmp_path), total_steps=1, prefix=prefix).log(1, {'loss': 1.0})
  files = sorted(tmp_path.glob('events.out.tfevents.*'))
  assert len(files) == 2
  assert {scalars_of(read_events(f))[0][0] for f in files} == {'supervised/loss', 'dlp/loss'}


def test_only_process_zero_writes_or_prints(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  logger = training.MetricLogger(str(tmp_path / 'run'), total_steps=10)
  logger.log(1, {'loss': 1.0})
  logger.log_results(1, {'accuracy': 0.5}, prefix='test')
  logger.flush()
  assert not (tmp_path / 'run').exists()
  assert capsys.readouterr().out == ''


def test_non_finite_loss_stops_naming_the_checkpoint():
  metric_log.check_finite(1.0, 3)
  with pytest.raises(training.NonFiniteLossError, match='loss is nan at step 3.*in /ck'):
    metric_log.check_finite(float('nan'), 3, '/ck')
