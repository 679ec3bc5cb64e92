"""Several processes, one run: 2 processes x 2 CPU devices train as 1 process x 4 devices.

Each trainer's smoke config (few-shot dense classification on fake miniImageNet pickles;
semi-supervised MT+DLP on scikit-learn's digits) runs through launch/train.py as one process
with 4 CPU devices and as two processes with 2 each, joined by JAX's distributed runtime
(gloo collectives, a coordinator on localhost); the few-shot pair is started with
--coordinator_address/--num_processes/--process_id, the semi-supervised one with the
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables. Both layouts hold the same
4-device mesh, so they must train on the same global batches: every logged step's losses
agree to float32 rounding (LOSS_RTOL, relative: the two runs sum the gradients over the
devices in another order and the differences compound; measured at most 5.6e-7 here, 2.0e-6
over 150 MT+DLP steps), and results.json is the same (RESULT_RTOL). Processes that each
passed the whole global batch (before mesh.local_rows) differ from step 1 on (6.161 vs 6.144).
Only process 0 writes: the two-process workdir holds one event file per logger, as the
one-process workdir. The few-shot command is then run again on its finished two-process
workdir: both processes restore the checkpoint they wrote and evaluate it to the same
results.json, while this (one-device) process evaluates the same checkpoint.

Each trainer's three processes run at once: 52 s in all on this 2-core machine at a load
average of 2 from other jobs, 126 to 130 s at 6 to 10.
"""

import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import pytest

from fsl import train as fsl_train
from groundwork.training import distributed
from groundwork.training.metric_log import read_scalars
from tests import fake_data
from tests.conftest import xla_optimizations_off

pytestmark = pytest.mark.multihost

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOSS_RTOL = 1e-5
RESULT_RTOL = 1e-6
# Accuracies count decisions: parameters that differ at float32 rounding (the two runs sum
# gradients in another order) can flip a query that lies on a decision boundary. Measured
# without the CPU kernels: one validation setting 0.915 against 0.910 (one query of 200).
DECISION_ATOL = 0.01
TIMEOUT_S = 600
# Variables that would make a launch join some other run, or pick another platform.
_SCRUBBED = ('JAX_', 'SLURM_', 'OMPI_', 'XLA_FLAGS', 'TPU_')

FSL_ARGS = [
    '--config=configs/fsl/dense_classification.py:dataset=miniimagenet,head=dc,encoder=conv4,smoke',
    '--config.figures=False',
    '--config.eval.retrieval.enabled=False',
    # Not a multiple of the 4 devices: each embedding batch is padded, the padding dropped.
    '--config.eval.embed_batch=30',
]
SSL_ARGS = [
    '--config=configs/ssl/semi_supervised.py:dataset=digits,method=mt_dlp,smoke',
    '--config.figures=False',
    # 200 images (50 labelled): 15 Mean Teacher steps, then 2 epochs of 15 with propagation.
    '--config.train_subset=200',
    '--config.labels=50',
    '--config.log_every_steps=1',
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _environment(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
  env.update(
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      JAX_PLATFORMS='cpu',
      JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
      # The runs check what the processes compute, not how fast: XLA's optimisation passes
      # are half of a smoke run's time on a CPU.
      JAX_DISABLE_MOST_OPTIMIZATIONS='true',
  )
  return env


def _start(args, workdir, processes: int, devices: int, via: str) -> list:
  """The launches of one run: `processes` of `devices` CPU devices each."""
  command = [sys.executable, 'launch/train.py', *args, f'--workdir={workdir}']
  port, launched = _free_port(), []
  for index in range(processes):
    env, extra = _environment(devices), []
    if processes > 1 and via == 'flags':
      extra = [
          f'--coordinator_address=localhost:{port}',
          f'--num_processes={processes}',
          f'--process_id={index}',
      ]
    elif processes > 1:
      env.update(
          JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
          JAX_NUM_PROCESSES=str(processes),
          JAX_PROCESS_ID=str(index),
      )
    log = open(f'{workdir}.process{index}.log', 'w')
    launched.append(
        (subprocess.Popen(command + extra, cwd=ROOT, env=env, stdout=log, stderr=log), log)
    )
  return launched


def _finish(launched) -> None:
  """Waits for the launches; one that fails stops the others (they would wait for it)."""
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(process.poll() is None for process, _ in launched):
      if time.monotonic() > deadline or any(process.poll() for process, _ in launched):
        break
      time.sleep(0.2)
  finally:
    for process, log in launched:
      if process.poll() is None:
        process.kill()
        process.wait()
      log.close()
  for process, log in launched:
    assert process.returncode == 0, pathlib.Path(log.name).read_text()[-5000:]


def _assert_same_losses(one: pathlib.Path, two: pathlib.Path) -> None:
  expected, got = read_scalars(str(one)), read_scalars(str(two))
  timing = lambda tags: {t for t in tags if t.endswith('steps_per_sec')}
  assert set(got) - timing(got) == set(expected) - timing(expected)
  losses = [tag for tag in expected if tag.endswith(('loss', 'logit_distance'))]
  assert losses
  for tag in set(expected) - timing(expected):
    assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]], tag
    tolerance = LOSS_RTOL if tag in losses else RESULT_RTOL
    atol = DECISION_ATOL if _counts_decisions(tag) else 1e-9
    for (step, a), (_, b) in zip(expected[tag], got[tag]):
      assert math.isclose(a, b, rel_tol=tolerance, abs_tol=atol), (tag, step, a, b)
  # One event file per logger: the second process wrote none.
  events = lambda workdir: len(list(workdir.glob('events.out.tfevents.*')))
  assert events(two) == events(one) > 0


def _counts_decisions(name: str) -> bool:
  return any(word in name for word in ('accuracy', 'error', 'ci95'))


def _assert_same_results(expected, got, path='results') -> None:
  if isinstance(expected, dict):
    assert set(got) == set(expected), path
    for key in expected:
      _assert_same_results(expected[key], got[key], f'{path}.{key}')
  elif isinstance(expected, float):
    atol = DECISION_ATOL if _counts_decisions(path) else 1e-12
    assert math.isclose(expected, got, rel_tol=RESULT_RTOL, abs_tol=atol), (path, expected, got)
  else:
    assert expected == got, path


def _results(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / 'results.json').read_text())


def _train_both_ways(args, tmp_path, via: str) -> tuple[pathlib.Path, pathlib.Path]:
  """One process of 4 devices and two of 2, all three at once."""
  one, two = tmp_path / 'one_process', tmp_path / 'two_processes'
  runs = [_start(args, one, 1, 4, via), _start(args, two, 2, 2, via)]
  for launched in runs:
    _finish(launched)
  return one, two


def test_few_shot_training_on_two_processes_matches_one(tmp_path):
  data_dir = tmp_path / 'miniimagenet'
  fake_data.write_miniimagenet(data_dir, 'pickle', {'train': 8, 'val': 5, 'test': 5}, 12)
  args = [*FSL_ARGS, f'--config.data_dir={data_dir}']
  one, two = _train_both_ways(args, tmp_path, via='flags')
  _assert_same_losses(one, two)
  _assert_same_results(_results(one), _results(two))
  assert (two / 'finished.json').exists() and (two / 'config.json').exists()
  first = _results(two)

  # The same command again: both processes restore the last checkpoint and only evaluate.
  (two / 'results.json').unlink()
  rerun = _start(args, two, 2, 2, via='flags')
  # Meanwhile this one-device process evaluates the checkpoint both processes wrote.
  config = ml_collections.ConfigDict(json.loads((two / 'config.json').read_text()))
  try:
    with xla_optimizations_off():
      evaluated = fsl_train.evaluate(config, str(two), output_dir=str(tmp_path / 'evaluated'))
  finally:
    _finish(rerun)
  _assert_same_results(first, _results(two))
  assert evaluated['fewshot'].keys() == first['fewshot'].keys()
  for name, summary in evaluated['fewshot'].items():
    assert summary['accuracy'] == pytest.approx(first['fewshot'][name]['accuracy'])


def test_semi_supervised_training_on_two_processes_matches_one(tmp_path):
  one, two = _train_both_ways(SSL_ARGS, tmp_path, via='env')
  _assert_same_losses(one, two)
  _assert_same_results(_results(one), _results(two))
  assert 'pseudo_label_accuracy' in _results(two)


# ---------------------------------------------------------------- when to start the runtime


def test_one_process_starts_nothing():
  assert distributed.distributed_arguments(environ={}) is None
  assert distributed.distributed_arguments(environ={'SLURM_STEP_NUM_TASKS': '1'}) is None
  assert distributed.distributed_arguments(num_processes=1, process_id=0, environ={}) is None


def test_flags_win_over_the_environment():
  env = {
      'JAX_COORDINATOR_ADDRESS': 'env:1',
      'JAX_NUM_PROCESSES': '4',
      'JAX_PROCESS_ID': '3',
  }
  assert distributed.distributed_arguments('flag:2', None, 1, environ=env) == {
      'coordinator_address': 'flag:2',
      'num_processes': 4,
      'process_id': 1,
  }
  assert distributed.distributed_arguments(environ=env) == {
      'coordinator_address': 'env:1',
      'num_processes': 4,
      'process_id': 3,
  }


def test_a_scheduler_with_several_tasks_leaves_the_rest_to_jax():
  assert distributed.distributed_arguments(environ={'SLURM_STEP_NUM_TASKS': '8'}) == {}
  assert distributed.distributed_arguments(environ={'OMPI_COMM_WORLD_SIZE': '2'}) == {}


@pytest.mark.parametrize(
    ('env', 'message'),
    [
        ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'}, r'process_id.*\[0, 1\]'),
        ({'JAX_NUM_PROCESSES': '0'}, 'num_processes.*at least 1'),
        ({'JAX_PROCESS_ID': 'one'}, 'JAX_PROCESS_ID.*integer'),
    ],
)
def test_bad_settings_name_the_flag_or_variable(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.distributed_arguments(environ=env)
