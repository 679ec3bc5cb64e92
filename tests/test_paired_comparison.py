"""benchmarks/paired_comparison.py: pairs files on the same episode list, refuses the rest."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fsl.episodic_evaluation import save_episode_accuracies
from groundwork.data.episodes import episode_list_id, make_episodes

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import paired_comparison  # pylint: disable=wrong-import-position

LABELS = np.repeat(np.arange(6), 4)  # 6 classes of 4 images.


def _identity(seed=0, num_episodes=4, labels=LABELS):
  return episode_list_id(make_episodes(labels, 5, 1, 1, num_episodes, seed), seed)


def _workdir(path, accuracies, **identity):
  path.mkdir()
  accuracies = np.asarray(accuracies, np.float32)
  save_episode_accuracies(
      str(path / 'episode_accuracies.npz'), {'5way_1shot': (accuracies, _identity(**identity))}
  )
  return str(path)


def test_pairs_the_same_list_episode_by_episode(tmp_path, capsys):
  a = _workdir(tmp_path / 'a', [1.0, 0.5, 0.5, 1.0])
  b = _workdir(tmp_path / 'b', [0.5, 0.5, 0.0, 1.0])
  paired_comparison.main(a, b)
  row = capsys.readouterr().out.splitlines()[1].split()
  # Differences 0.5, 0, 0.5, 0: mean 0.25, population std 0.25, CI 1.96 * 0.25 / sqrt(4).
  assert row == ['5way_1shot', '75.00', '50.00', '+25.00', '±', '24.50', '4']


@pytest.mark.parametrize(
    'other, message',
    [
        (dict(seed=1), r'5way_1shot: seed 0 vs 1; index hash [0-9a-f]{8}\.\. vs [0-9a-f]{8}\.\.$'),
        (dict(num_episodes=3), r'5way_1shot: episodes 4 vs 3; index hash '),
        # Same settings on a dataset in another order (e.g. another split): only the hash.
        (dict(labels=LABELS[::-1].copy()), r'5way_1shot: index hash [0-9a-f]{8}\.\. vs'),
    ],
)
def test_refuses_different_lists_naming_what_differs(tmp_path, other, message):
  a = _workdir(tmp_path / 'a', [1.0] * 4)
  b = _workdir(tmp_path / 'b', [1.0] * other.get('num_episodes', 4), **other)
  with pytest.raises(paired_comparison.EpisodeListMismatch, match=message) as error:
    paired_comparison.main(a, b)
  assert 'different episode lists' in str(error.value)


def test_refuses_files_without_identities(tmp_path):
  a = _workdir(tmp_path / 'a', [1.0] * 4)
  old = tmp_path / 'old'
  old.mkdir()
  np.savez(old / 'episode_accuracies.npz', **{'5way_1shot': np.ones(4, np.float32)})
  with pytest.raises(paired_comparison.EpisodeListMismatch, match='re-evaluate.*launch/evaluate'):
    paired_comparison.main(a, str(old))


def test_the_script_exits_with_the_message(tmp_path):
  a = _workdir(tmp_path / 'a', [1.0] * 4)
  b = _workdir(tmp_path / 'b', [1.0] * 4, seed=1)
  out = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'paired_comparison.py'), a, b],
      capture_output=True,
      text=True,
      cwd=ROOT,
  )
  assert out.returncode == 1 and '5way_1shot: seed 0 vs 1' in out.stderr, out.stderr[-2000:]
