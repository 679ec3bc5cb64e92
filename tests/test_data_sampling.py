"""Episodes, balanced label splits, reference label files, two-stream batches, prefetch."""

import threading

import jax
import numpy as np
import pytest

from groundwork.data import (
    Episodes,
    balanced_labeled_indices,
    episode_batches,
    make_episodes,
    prefetch_to_device,
    read_reference_labels,
    two_stream_batches,
)

# 6 classes; class c holds 10 + c images, interleaved.
LABELS = np.concatenate([np.full(10 + c, c) for c in range(6)])[
    np.random.default_rng(0).permutation(75)
]


# ---------------------------------------------------------------- episodes


def test_episode_properties():
  episodes = make_episodes(LABELS, n_way=4, k_shot=2, n_query=3, num_episodes=50, seed=1)
  assert episodes.support_idx.shape == (50, 8) and episodes.query_idx.shape == (50, 12)
  assert all(
      a.dtype == np.int32
      for a in (
          episodes.support_idx,
          episodes.query_idx,
          episodes.support_labels,
          episodes.query_labels,
      )
  )
  np.testing.assert_array_equal(episodes.support_labels[7], [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(episodes.query_labels[7], np.repeat(np.arange(4), 3))
  for e in range(50):
    support, query = episodes.support_idx[e], episodes.query_idx[e]
    assert not set(support) & set(query)  # Disjoint support and query.
    assert len(set(support)) == 8 and len(set(query)) == 12
    # Class-major: the images of episode class j all carry one dataset class, distinct per j.
    support_classes = LABELS[support].reshape(4, 2)
    query_classes = LABELS[query].reshape(4, 3)
    assert np.all(support_classes == support_classes[:, :1])
    np.testing.assert_array_equal(query_classes, np.repeat(support_classes[:, :1], 3, axis=1))
    assert len(set(support_classes[:, 0])) == 4
  # Over many episodes every class is drawn.
  assert set(LABELS[episodes.support_idx].ravel()) == set(range(6))


def test_episodes_are_determined_by_the_seed(tmp_path):
  a = make_episodes(LABELS, 5, 1, 4, 20, seed=7)
  b = make_episodes(LABELS, 5, 1, 4, 20, seed=7)
  c = make_episodes(LABELS, 5, 1, 4, 20, seed=8)
  np.testing.assert_array_equal(a.support_idx, b.support_idx)
  np.testing.assert_array_equal(a.query_idx, b.query_idx)
  assert not np.array_equal(a.query_idx, c.query_idx)
  a.save(tmp_path / 'eval_episodes.npz')
  loaded = Episodes.load(tmp_path / 'eval_episodes.npz')
  np.testing.assert_array_equal(loaded.query_idx, a.query_idx)
  np.testing.assert_array_equal(loaded.support_labels, a.support_labels)
  assert len(a[3:8]) == 5


def test_episode_errors_name_the_class():
  with pytest.raises(
      ValueError,
      match=r"Class 'c0' \(label 0\) has 10 images but k_shot \+ " r'n_query = 5 \+ 6 = 11',
  ):
    make_episodes(LABELS, 3, 5, 6, 1, seed=0, class_names=[f'c{i}' for i in range(6)])
  with pytest.raises(ValueError, match='7-way episodes need 7 classes; the data has 6'):
    make_episodes(LABELS, 7, 1, 1, 1, seed=0)


def test_episode_batches_gather_images_on_device():
  images = np.arange(75, dtype=np.uint8).reshape(75, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
  episodes = make_episodes(LABELS, 3, 2, 1, 5, seed=2)
  batches = list(episode_batches(images, episodes, batch_size=2))
  assert [b['support'].shape for b in batches] == [(2, 6, 2, 2, 1)] * 2 + [(1, 6, 2, 2, 1)]
  assert isinstance(batches[0]['query'], jax.Array)
  np.testing.assert_array_equal(batches[2]['query'][0, :, 0, 0, 0], episodes.query_idx[4])
  np.testing.assert_array_equal(batches[1]['support_labels'], episodes.support_labels[2:4])


# ---------------------------------------------------------------- balanced labels


def test_balanced_labeled_indices():
  chosen = balanced_labeled_indices(LABELS, 24, seed=3)
  assert chosen.dtype == np.int64 and len(set(chosen)) == 24
  np.testing.assert_array_equal(np.bincount(LABELS[chosen]), [4] * 6)
  np.testing.assert_array_equal(chosen, balanced_labeled_indices(LABELS, 24, seed=3))
  assert not np.array_equal(chosen, balanced_labeled_indices(LABELS, 24, seed=4))


def test_balanced_labeled_indices_errors():
  with pytest.raises(ValueError, match='num_labels=25 is not divisible by the 6 classes'):
    balanced_labeled_indices(LABELS, 25, seed=0)
  with pytest.raises(ValueError, match='needs 11 labels per class but class 0 has only 10'):
    balanced_labeled_indices(LABELS, 66, seed=0)


# ---------------------------------------------------------------- reference label files

FILENAMES = [f'{i}_{["cat", "dog", "frog"][i % 3]}.png' for i in range(9)]
NAMES = ['cat', 'dog', 'frog']


def test_read_reference_labels(tmp_path):
  path = tmp_path / '6_balanced_labels' / '00.txt'
  path.parent.mkdir()
  path.write_text('4_dog.png dog\n0_cat.png cat\n\n8_frog.png frog\n')
  indices, labels = read_reference_labels(
      path, FILENAMES, NAMES, labels=np.arange(9, dtype=np.int32) % 3
  )
  np.testing.assert_array_equal(indices, [4, 0, 8])
  np.testing.assert_array_equal(labels, [1, 0, 2])


@pytest.mark.parametrize(
    'content, message',
    [
        (
            '4_dog.png dog\n99_cat.png cat\n',
            r"00\.txt, line 2: file '99_cat\.png' is not in the dataset",
        ),
        (
            '4_dog.png wolf\n',
            r"00\.txt, line 1: class 'wolf' is not one of the dataset's 3 classes",
        ),
        ('4_dog.png cat\n', r"file '4_dog\.png' is labelled 'cat' here but 'dog' in the dataset"),
        ('4_dog.png dog\n4_dog.png dog\n', r"line 2: file '4_dog\.png' is listed twice"),
        ('4_dog.png\n', r'line 1: expected "filename classname"'),
    ],
)
def test_reference_label_errors(tmp_path, content, message):
  path = tmp_path / '00.txt'
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    read_reference_labels(path, FILENAMES, NAMES, labels=np.arange(9, dtype=np.int32) % 3)


# ---------------------------------------------------------------- two-stream batches


def test_two_stream_batches():
  unlabeled, labeled = np.arange(100, 123), np.arange(5)
  batches = two_stream_batches(
      unlabeled, labeled, batch_size=7, labeled_batch_size=2, seed=0, epoch=0
  )
  assert batches.shape == (4, 7)  # 23 unlabelled // 5 per batch; the rest is dropped.
  unlabeled_part, labeled_part = batches[:, :5].ravel(), batches[:, 5:].ravel()
  assert len(set(unlabeled_part)) == 20 and set(unlabeled_part) <= set(unlabeled)
  # 8 labelled slots = one full pass over the 5 labelled indices, then 3 of the next pass.
  assert sorted(labeled_part[:5]) == list(range(5)) and len(set(labeled_part[5:])) == 3
  again = two_stream_batches(unlabeled, labeled, 7, 2, seed=0, epoch=0)
  np.testing.assert_array_equal(batches, again)
  next_epoch = two_stream_batches(unlabeled, labeled, 7, 2, seed=0, epoch=1)
  assert not np.array_equal(batches, next_epoch)
  with pytest.raises(
      ValueError, match='labeled_batch_size=7 must lie strictly between 0 and ' 'batch_size=7'
  ):
    two_stream_batches(unlabeled, labeled, 7, 7, seed=0, epoch=0)
  with pytest.raises(ValueError, match='23 unlabelled indices do not fill one batch of 30'):
    two_stream_batches(unlabeled, labeled, 32, 2, seed=0, epoch=0)


# ---------------------------------------------------------------- prefetch


def test_prefetch_keeps_order_and_puts_on_device():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  batches = [{'x': np.full((2, 3), i, np.float32), 'y': np.array([i])} for i in range(5)]
  out = list(prefetch_to_device(iter(batches), size=2, sharding=sharding))
  assert [int(b['y'][0]) for b in out] == list(range(5))
  assert all(isinstance(b['x'], jax.Array) and b['x'].sharding == sharding for b in out)


def test_prefetch_reraises_and_stops_early():
  def failing():
    yield np.zeros(2)
    raise RuntimeError('reader broke')

  stream = prefetch_to_device(failing())
  next(stream)
  with pytest.raises(RuntimeError, match='reader broke'):
    next(stream)

  produced = []

  def endless():
    i = 0
    while True:
      produced.append(i)
      yield np.array([i])
      i += 1

  stream = prefetch_to_device(endless(), size=2)
  assert int(next(stream)[0]) == 0
  stream.close()  # Stops the producer thread, which was at most size + 2 batches ahead.
  assert not any(t.name == 'prefetch_to_device' and t.is_alive() for t in threading.enumerate())
  assert len(produced) <= 4
