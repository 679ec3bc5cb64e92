"""knn_search: brute force's neighbours, self excluded even among duplicates."""

import numpy as np
import pytest

import groundwork_cpu
from groundwork_cpu.knn import drop_self


def _normalized(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(x, k):
  s = x.astype(np.float64) @ x.T.astype(np.float64)
  np.fill_diagonal(s, -np.inf)
  idx = np.argsort(-s, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(s, idx, 1), idx


@pytest.mark.parametrize('n,d,k', [(4500, 8, 6), (300, 16, 7), (5, 3, 4)])
def test_equals_brute_force(n, d, k):
  # 4,500 rows: several 256-query and 2,048-row tiles, the last of each partial.
  x = _normalized(np.random.default_rng(n).standard_normal((n, d)))
  sims, idx = groundwork_cpu.knn_search(x, k)
  assert sims.dtype == np.float32 and idx.dtype == np.int32 and idx.shape == (n, k)
  ref_sims, ref_idx = _brute_force(x, k)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_self_is_excluded_even_with_exact_duplicates():
  x = _normalized(np.random.default_rng(2).standard_normal((20, 4)))
  x[5] = x[3]
  x[7] = x[3]
  _, idx = groundwork_cpu.knn_search(x, 3)
  assert not (idx == np.arange(20)[:, None]).any()
  assert set(idx[3, :2]) == {5, 7} and set(idx[5, :2]) == {3, 7}


def test_drop_self_removes_the_self_index_not_column_zero():
  sims = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
  idx = np.array([[4, 0, 2], [0, 4, 3]])  # Row 0: self second; row 1: self absent.
  kept_sims, kept = drop_self(sims, idx, 2)
  np.testing.assert_array_equal(kept, [[4, 2], [0, 4]])
  np.testing.assert_array_equal(kept_sims, [[1.0, 0.5], [1.0, 1.0]])


@pytest.mark.parametrize('shape,k', [((10, 3), 0), ((10, 3), 10), ((10,), 2)])
def test_bad_arguments_are_refused(shape, k):
  with pytest.raises(ValueError):
    groundwork_cpu.knn_search(np.ones(shape, np.float32), k)
