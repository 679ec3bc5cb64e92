"""Metrics: TensorBoard event files plus one readable stdout line per log step."""
import time

from clu import metric_writers
import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


def check_finite(loss: float, step: int, checkpoint_dir: str | None = None) -> None:
  if not np.isfinite(loss):
    where = f' The last good checkpoint is in {checkpoint_dir}.' if checkpoint_dir else ''
    raise NonFiniteLossError(
        f'loss is {loss} at step {step}: training stopped.{where} '
        'Lower optim.lr or check the input data.')


class MetricLogger:
  """Writes scalars to TensorBoard and prints `step, loss, lr, steps/s, ETA`."""

  def __init__(self, workdir: str, total_steps: int, prefix: str = 'train'):
    self._writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    self._total = total_steps
    self._prefix = prefix
    self._last_time = None
    self._last_step = None

  def log(self, step: int, scalars: dict) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.perf_counter()
    if self._last_time is not None and step > self._last_step:
      rate = (step - self._last_step) / (now - self._last_time)
      scalars['steps_per_sec'] = rate
      eta = (self._total - step) / rate if rate > 0 else float('inf')
    else:
      eta = None
    self._last_time, self._last_step = now, step
    self._writer.write_scalars(step, {f'{self._prefix}/{k}': v for k, v in scalars.items()})
    if jax.process_index() == 0:
      text = ' '.join(f'{k}={v:.4g}' for k, v in scalars.items())
      eta_text = f' eta={eta / 60:.1f}min' if eta is not None else ''
      print(f'[{self._prefix}] step {step}/{self._total} {text}{eta_text}', flush=True)

  def flush(self) -> None:
    self._writer.flush()
