"""scikit-learn's 8x8 handwritten digits with a seeded, class-stratified split."""

from __future__ import annotations

import numpy as np

from groundwork.data.dataset import ImageDataset


def load_digits(seed: int, test_fraction: float = 0.2) -> tuple[ImageDataset, ImageDataset]:
  """(train, test) of the 1,797 digits, uint8 [N, 8, 8, 1] scaled from 0..16 to 0..255.

  Each class puts round(test_fraction * its size) images in the test set,
  chosen by `seed`.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction={test_fraction} must lie strictly between 0 and 1.')
  # Imported here: scikit-learn adds about half a second to importing groundwork.data.
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  raw = datasets.load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = raw.target.astype(np.int32)
  class_names = [str(name) for name in raw.target_names]
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(labels), bool)
  for label in range(len(class_names)):
    members = np.flatnonzero(labels == label)
    n_test = int(round(test_fraction * len(members)))
    is_test[rng.choice(members, n_test, replace=False)] = True

  def part(mask: np.ndarray) -> ImageDataset:
    return ImageDataset(images=images[mask], labels=labels[mask], class_names=class_names)

  return part(~is_test), part(is_test)
