"""A workdir belongs to one run and one config: the lock, the config check, the finished
marker, the evaluation checks and the one-line storage messages."""

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from groundwork import training
from groundwork.training import workdir as workdir_lib


def _config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
      {
          'trainer': 'fsl',
          'head': 'dc',
          'seed': 0,
          'data_dir': '/data/a',
          'log_every_steps': 20,
          'optim': {'lr': 0.1, 'epochs': 30},
          'eval': {'n_way': 5, 'shots': (1, 5)},
          'checkpoint': {'every_epochs': 1, 'keep': 3},
      }
  )
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(autouse=True)
def _release_locks():
  yield
  workdir_lib._release_all()  # pylint: disable=protected-access


HOLDER = textwrap.dedent("""
    import sys
    from groundwork.training.workdir import WorkdirLock
    WorkdirLock(sys.argv[1]).acquire()
    print('locked', flush=True)
    sys.stdin.read()  # Holds the lock until the test closes stdin or kills it.
""")


def _holder(path):
  proc = subprocess.Popen(
      [sys.executable, '-c', HOLDER, str(path)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
  )
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def test_safe_fields_cover_their_subfields_only():
  for field in ('eval.n_way', 'eval', 'checkpoint.keep', 'log_every_steps', 'data_dir'):
    assert training.is_safe_to_change(field), field
  for field in ('optim.lr', 'seed', 'evaluation.x', 'validation.shot', 'encoder_kwargs.width'):
    assert not training.is_safe_to_change(field), field


def test_config_diff_lists_leaves_with_both_values_and_ignores_tuple_vs_list():
  saved = json.loads(json.dumps(_config().to_dict()))  # As config.json holds it.
  assert training.config_diff(saved, _config()) == []
  new = _config(**{'optim.lr': 0.2, 'seed': 1})
  new.extra = {'width': 4}
  assert training.config_diff(saved, new) == [
      ('extra.width', workdir_lib.MISSING, 4),
      ('optim.lr', 0.1, 0.2),
      ('seed', 0, 1),
  ]


def test_a_field_added_later_compares_as_its_old_behaviour_when_absent():
  saved = json.loads(json.dumps(_config().to_dict()))  # Written before the field existed.
  new = _config()
  new.augment = {'color_jitter': 0.0}
  assert training.config_diff(saved, new) == []
  new.augment.color_jitter = 0.4
  assert training.config_diff(saved, new) == [('augment.color_jitter', 0.0, 0.4)]


def test_a_changed_config_is_refused_listing_each_field_then_allowed_and_recorded(tmp_path):
  run = training.start_run(str(tmp_path), _config())
  assert not (tmp_path / 'config.json').exists()  # Written only once every check passed.
  run.save_config()
  run.finish(10)
  changed = _config(**{'optim.lr': 0.2, 'seed': 1, 'eval.n_way': 10})
  with pytest.raises(training.ConfigChanged) as refused:
    training.start_run(str(tmp_path), changed)
  message = str(refused.value)
  assert 'config.optim.lr: 0.1 in the workdir, 0.2 now' in message
  assert 'config.seed: 0 in the workdir, 1 now' in message
  assert 'eval.n_way' not in message  # Safe to change.
  assert '--allow_config_change' in message
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 0
  run = training.start_run(str(tmp_path), changed, allow_config_change=True)
  run.save_config()
  history = json.loads((tmp_path / 'config_changes.json').read_text())
  assert history[-1]['changes'] == {
      'eval.n_way': {'old': 5, 'new': 10},
      'optim.lr': {'old': 0.1, 'new': 0.2},
      'seed': {'old': 0, 'new': 1},
  }
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 1
  # The run trains on under another config: it is no longer the finished run.
  assert not (tmp_path / 'finished.json').exists()


def test_a_safe_change_needs_no_flag_and_keeps_the_run_finished(tmp_path):
  run = training.start_run(str(tmp_path), _config())
  run.save_config()
  run.finish(10)
  run = training.start_run(str(tmp_path), _config(**{'eval.n_way': 10, 'data_dir': '/b'}))
  run.save_config()
  assert (tmp_path / 'finished.json').exists()
  assert set(json.loads((tmp_path / 'config_changes.json').read_text())[-1]['changes']) == {
      'eval.n_way',
      'data_dir',
  }


def test_a_busy_workdir_names_the_other_process(tmp_path):
  holder = _holder(tmp_path)
  try:
    with pytest.raises(training.WorkdirBusy) as busy:
      training.start_run(str(tmp_path), _config())
    message = str(busy.value)
    assert f'workdir {tmp_path} is in use by process {holder.pid} on {socket.gethostname()}' in (
        message
    )
    assert 'started 2' in message  # An ISO date.
  finally:
    holder.kill()
    holder.wait()
  # The holder died without a word: its lock is free and is taken over, naming it.
  training.start_run(str(tmp_path), _config())
  lock = json.loads((tmp_path / 'run.lock').read_text())
  assert lock['pid'] == os.getpid()


def test_the_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  dead = subprocess.run(
      [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True
  )
  pid = int(dead.stdout)
  (tmp_path / 'run.lock').write_text(
      json.dumps({'pid': pid, 'host': 'elsewhere', 'started': '2020-01-01T00:00:00'})
  )
  training.start_run(str(tmp_path), _config())
  assert f'process {pid} on elsewhere, started 2020-01-01T00:00:00' in capsys.readouterr().err
  assert json.loads((tmp_path / 'run.lock').read_text())['pid'] == os.getpid()


def test_finish_releases_the_lock_and_clears_its_holder(tmp_path):
  run = training.start_run(str(tmp_path), _config())
  run.finish(7)
  assert (tmp_path / 'run.lock').read_text() == ''
  assert json.loads((tmp_path / 'finished.json').read_text())['step'] == 7
  other = workdir_lib.WorkdirLock(str(tmp_path))
  other.acquire()  # Free: no error, and no one to take over from.
  assert other.taken_over is None
  other.release()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
  first = workdir_lib.WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(training.WorkdirBusy, match=f'process {os.getpid()}'):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  first.release()


def test_evaluation_needs_a_finished_run_of_the_same_method_and_config(tmp_path):
  with pytest.raises(training.WorkdirError, match='holds no config.json'):
    training.check_evaluable(str(tmp_path), _config())
  run = training.start_run(str(tmp_path), _config())
  run.save_config()
  with pytest.raises(training.NotFinished, match='holds no finished run.*train command'):
    training.check_evaluable(str(tmp_path), _config())
  run.finish(10)
  training.check_evaluable(str(tmp_path), _config(**{'eval.n_way': 20}))
  with pytest.raises(training.WorkdirError, match='trained by trainer=fsl, head=dc; the config '):
    training.check_evaluable(str(tmp_path), _config(head='gap'))
  with pytest.raises(training.WorkdirError, match=r'config.optim.lr: 0.1 in the workdir, 0.3'):
    training.check_evaluable(str(tmp_path), _config(**{'optim.lr': 0.3}))


def test_storage_errors_are_one_line_naming_the_path(tmp_path):
  full = OSError(errno.ENOSPC, 'No space left on device')
  message = training.storage_message(full, str(tmp_path))
  assert message.startswith(f'no space left on the device holding {tmp_path}')
  assert '\n' not in message and 'run the same command again' in message
  wrapped = ValueError("RESOURCE_EXHAUSTED: Failed to write [os_error_code='28']")
  assert 'no space left' in training.storage_message(wrapped, str(tmp_path))
  read_only = OSError(errno.EROFS, 'Read-only file system', str(tmp_path / 'results.json'))
  assert training.storage_message(read_only, str(tmp_path)).startswith(
      f'{tmp_path}/results.json is not writable (Read-only file system)'
  )
  # An unreadable file outside the run's directory is another problem, left to its traceback.
  denied = OSError(errno.EACCES, 'Permission denied', '/data/train.zip')
  assert training.storage_message(denied, str(tmp_path)) is None
  assert training.storage_message(ValueError('bad shape'), str(tmp_path)) is None


def test_a_checkpoint_that_cannot_fit_stops_and_keeps_the_last_one(tmp_path, monkeypatch):
  checkpoints = training.Checkpointer(str(tmp_path), keep=3)
  state = {'w': np.arange(4, dtype=np.float32)}
  checkpoints.save(1, state)
  monkeypatch.setattr(workdir_lib, '_free_bytes', lambda path: 1000)
  with pytest.raises(
      training.StorageError, match=r'no space left for checkpoint step 2 in .*: 1 KiB free'
  ):
    checkpoints.save(2, state)
  assert checkpoints.all_steps() == [1]
  restored = checkpoints.restore({'w': np.zeros(4, np.float32)})
  np.testing.assert_array_equal(restored[0]['w'], state['w'])


def test_a_network_trained_on_other_normalisation_is_refused(tmp_path):
  config = _config()
  config.dataset = 'cifar_fs'
  run = training.start_run(str(tmp_path), config)
  mean, std = workdir_lib.NORMALIZATION['cifar_fs']
  run.save_config({'normalization': {'mean': list(mean), 'std': list(std)}})
  run.finish(10)
  training.check_evaluable(str(tmp_path), config)  # The code's own normalisation passes.
  cifar10 = {'mean': [0.4914, 0.4822, 0.4465], 'std': [0.2470, 0.2435, 0.2616]}
  (tmp_path / 'model.json').write_text(json.dumps({'normalization': cifar10}))
  with pytest.raises(training.WorkdirError) as refused:
    training.check_evaluable(str(tmp_path), config)
  message = str(refused.value)
  assert 'trained on cifar_fs normalised with mean [0.4914, 0.4822, 0.4465]' in message
  assert f'this code normalises cifar_fs with mean {list(mean)}' in message
  with pytest.raises(training.WorkdirError, match='which the network never saw'):
    training.start_run(str(tmp_path), config)
  with pytest.raises(training.WorkdirError, match='config.base_workdir='):
    training.check_normalization(str(tmp_path), 'cifar_fs', 'config.base_workdir')
  (tmp_path / 'model.json').unlink()
  training.check_normalization(str(tmp_path), 'cifar_fs')  # Trained before model.json: passes.
  training.start_run(str(tmp_path), config)  # The refusal released the workdir's lock.
