"""Episodic accuracy on hand-built episodes, the CI summary and Lake's one-shot protocol."""

import dataclasses
import io
import math
import types

import numpy as np
import pytest

from fsl.episodic_evaluation import (
    embed_in_batches,
    episode_accuracies,
    lake_oneshot_error,
    load_episode_accuracies,
    save_episode_accuracies,
    summarize,
)
from groundwork.data.episodes import Episodes, episode_list_id, make_episodes

# Dataset of 6 points in 2-D: 0-2 near the x-axis (class A), 3-5 near the y-axis (class B),
# except point 2 which sits near the y-axis although it belongs to class A.
FEATURES = np.array(
    [[1.0, 0.1], [2.0, -0.1], [0.2, 1.0], [0.1, 1.0], [-0.1, 3.0], [0.0, 1.0]], np.float32
)


def _episodes(support, query, support_labels, query_labels):
  return types.SimpleNamespace(
      **{
          k: np.asarray(v, np.int32)
          for k, v in dict(
              support_idx=support,
              query_idx=query,
              support_labels=support_labels,
              query_labels=query_labels,
          ).items()
      }
  )


# Episode 0: supports 0 (A) and 3 (B); queries 1 (A, right) and 4 (B, right) -> 1.0.
# Episode 1: supports 1 (A) and 5 (B); queries 2 (A, goes to B) and 3 (B, right) -> 0.5.
# Episode 2: classes swapped: supports 4 (label 0 = B) and 0 (label 1 = A); query 2 (A) -> 0.0,
#            query 5 (B) -> 1.0; -> 0.5.
EPISODES = _episodes(
    [[0, 3], [1, 5], [4, 0]],
    [[1, 4], [2, 3], [2, 5]],
    [[0, 1], [0, 1], [0, 1]],
    [[0, 1], [0, 1], [1, 0]],
)


def test_episode_accuracies_match_hand_counts_and_batching():
  calls = []
  acc = episode_accuracies(
      FEATURES, EPISODES, batch_size=2, progress=lambda d, t: calls.append((d, t))
  )
  np.testing.assert_allclose(acc, [1.0, 0.5, 0.5])
  assert calls == [(2, 3), (3, 3)]
  np.testing.assert_allclose(episode_accuracies(FEATURES, EPISODES, batch_size=3), acc)


def test_dense_scoring_uses_maps():
  # Maps of 2 positions, both the pooled feature except point 2's second position, which
  # points along x: averaged over positions point 2 now goes to class A (mean cosines about
  # 0.57 to A and 0.44 to B in episode 1), fixing episodes 1 and 2. Prototypes stay pooled.
  maps = np.repeat(FEATURES[:, None, None, :], 2, axis=2)
  maps[2, 0, 1] = [5.0, -0.5]
  acc = episode_accuracies(FEATURES, EPISODES, maps=maps, scoring='dense')
  np.testing.assert_allclose(acc, [1.0, 1.0, 1.0])


def test_summary_is_mean_and_ci95():
  summary = summarize(np.array([1.0, 0.5, 0.5]))
  std = math.sqrt(((1 - 2 / 3) ** 2 + 2 * (0.5 - 2 / 3) ** 2) / 3)
  assert summary == {
      'accuracy': pytest.approx(2 / 3),
      'ci95': pytest.approx(1.96 * std / math.sqrt(3)),
      'episodes': 3,
  }


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match='support_idx'):
    episode_accuracies(FEATURES[:4], EPISODES)
  with pytest.raises(ValueError, match='maps'):
    episode_accuracies(FEATURES, EPISODES, scoring='dense')
  with pytest.raises(ValueError, match="'pooled', 'dense'"):
    episode_accuracies(FEATURES, EPISODES, scoring='max')


def test_embed_in_batches_pads_last_batch():
  shapes = []

  def embed(x):
    shapes.append(x.shape)
    return x.sum(axis=1)

  out = embed_in_batches(embed, np.arange(10.0).reshape(5, 2), batch_size=2)
  np.testing.assert_allclose(out, [1, 5, 9, 13, 17])
  assert shapes == [(2, 2)] * 3


def test_lake_error_counts_wrong_items():
  # "Images" are 1x1x2 pixels; the embedding flattens them. Training image i points at angle i.
  angles = np.linspace(0, np.pi / 2, 3)
  train = np.stack([np.cos(angles), np.sin(angles)], axis=-1).reshape(3, 1, 1, 2)
  run_right = types.SimpleNamespace(
      train_images=train, test_images=train[::-1] * 2, test_targets=np.array([2, 1, 0])
  )
  run_one_wrong = types.SimpleNamespace(
      train_images=train, test_images=train, test_targets=np.array([0, 2, 2])
  )
  result = lake_oneshot_error(lambda x: x.reshape(len(x), -1), [run_right, run_one_wrong])
  assert result == {'error': pytest.approx(1 / 6), 'items': 6, 'rule': 'prototypes'}


# 8 classes of 6 images each, the images of a class not adjacent.
LABELS = np.tile(np.arange(8), 6)


def _list_id(labels=LABELS, n_way=5, k_shot=1, n_query=2, num_episodes=10, seed=0):
  episodes = make_episodes(labels, n_way, k_shot, n_query, num_episodes, seed)
  return episode_list_id(episodes, seed)


def test_episode_list_id_names_the_settings_and_repeats_for_the_same_list():
  identity = _list_id()
  assert {k: v for k, v in identity.items() if k != 'index_sha256'} == {
      'seed': 0,
      'n_way': 5,
      'k_shot': 1,
      'n_query': 2,
      'episodes': 10,
  }
  assert len(identity['index_sha256']) == 64
  assert _list_id() == identity


@pytest.mark.parametrize(
    'change, differs',
    [
        (dict(seed=1), {'seed'}),
        (dict(n_way=4), {'n_way'}),
        (dict(k_shot=2), {'k_shot'}),
        (dict(n_query=3), {'n_query'}),
        (dict(num_episodes=11), {'episodes'}),
        # The same draws on a dataset stored in another order: other images, same settings.
        (dict(labels=LABELS[::-1].copy()), set()),
    ],
)
def test_episode_list_id_differs_when_the_list_differs(change, differs):
  base, other = _list_id(), _list_id(**change)
  assert {k for k in base if base[k] != other[k]} == differs | {'index_sha256'}


def test_episode_list_id_covers_every_image_and_the_class_order():
  episodes = make_episodes(LABELS, 5, 1, 2, 10, 0)
  identity = episode_list_id(episodes, 0)
  query = episodes.query_idx.copy()
  query[9, 9] = next(i for i in range(len(LABELS)) if i not in query[9])  # One query image.
  assert episode_list_id(dataclasses.replace(episodes, query_idx=query), 0) != identity
  # Classes 0 and 1 of every episode swapped: the same images, another class order.
  swapped = dataclasses.replace(
      episodes,
      support_idx=episodes.support_idx[:, [1, 0, 2, 3, 4]],
      query_idx=episodes.query_idx[:, [2, 3, 0, 1, 4, 5, 6, 7, 8, 9]],
  )
  assert episode_list_id(swapped, 0)['index_sha256'] != identity['index_sha256']
  assert episode_list_id(Episodes.load(_saved(episodes)), 0) == identity


def _saved(episodes):
  buffer = io.BytesIO()
  episodes.save(buffer)
  buffer.seek(0)
  return buffer


def test_episode_accuracies_file_round_trip(tmp_path):
  path = str(tmp_path / 'episode_accuracies.npz')
  one, five = _list_id(k_shot=1), _list_id(k_shot=5, n_query=1)
  acc1, acc5 = np.linspace(0, 1, 10, dtype=np.float32), np.full(10, 0.8, np.float32)
  save_episode_accuracies(path, {'5way_1shot': (acc1, one), '5way_5shot': (acc5, five)})
  loaded = load_episode_accuracies(path)
  assert set(loaded) == {'5way_1shot', '5way_5shot'}
  np.testing.assert_array_equal(loaded['5way_1shot'][0], acc1)
  np.testing.assert_array_equal(loaded['5way_5shot'][0], acc5)
  assert loaded['5way_1shot'][1] == one and loaded['5way_5shot'][1] == five
  with np.load(path) as f:  # Still one plain array per setting.
    np.testing.assert_array_equal(f['5way_1shot'], acc1)
  assert not (tmp_path / 'episode_accuracies.npz.tmp').exists()


def test_episode_accuracies_file_checks_counts_and_reads_old_files(tmp_path):
  with pytest.raises(ValueError, match=r'5way_1shot: accuracies of shape \(9,\).*10 episodes'):
    save_episode_accuracies(str(tmp_path / 'a.npz'), {'5way_1shot': (np.ones(9), _list_id())})
  old = str(tmp_path / 'old.npz')
  np.savez(old, **{'5way_1shot': np.ones(3, np.float32)})  # As written before identities.
  loaded = load_episode_accuracies(old)
  np.testing.assert_array_equal(loaded['5way_1shot'][0], np.ones(3))
  assert loaded['5way_1shot'][1] is None
