"""Episodes a split cannot hold stop right after the data is read, naming the field and the
allowed range (before training, not after it)."""

import ml_collections
import numpy as np
import pytest

from fsl import fewshot_data
from groundwork import data as gdata


def _split(images_per_class=(20, 20, 19)) -> gdata.ImageDataset:
  labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(images_per_class)])
  images = np.zeros((len(labels), 4, 4, 1), np.uint8)
  return gdata.ImageDataset(images, labels, [f'char{c}' for c in range(len(images_per_class))])


def test_episodes_that_fit_pass():
  fewshot_data.check_episodes_fit(_split(), 'novel', 3, (1, 5), 14)


def test_more_ways_than_classes_names_n_way_and_the_range():
  with pytest.raises(
      ValueError,
      match=r'config.eval.n_way=4 exceeds the 3 classes of the novel ' r'split; allowed: 1..3',
  ):
    fewshot_data.check_episodes_fit(_split(), 'novel', 4, (1,), 2)


def test_shots_plus_queries_name_the_fields_the_smallest_class_and_the_range():
  with pytest.raises(
      ValueError,
      match=r'config.eval.shots=\(1, 5\) and config.eval.n_query=15 '
      r"need 5 \+ 15 = 20 images per class, but class 'char2' of the novel split "
      r'has 19; allowed: eval.shots \+ eval.n_query <= 19',
  ):
    fewshot_data.check_episodes_fit(_split(), 'novel', 3, (1, 5), 15)


def test_validation_episodes_are_checked_on_the_validation_classes():
  splits = fewshot_data.FewShotData(
      base=_split(), val=_split((3, 3)), novel=_split(), novel_name='test'
  )
  config = ml_collections.ConfigDict(
      {'eval': {'n_way': 2, 'shots': (1,), 'n_query': 2}, 'validation': {'shot': 2}}
  )
  with pytest.raises(ValueError, match=r'config.validation.shot=\(2,\) .* validation split'):
    fewshot_data.check_evaluation(config, splits)
