"""The in-memory image dataset every loader returns, and the checks loaders share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


# eq=False: comparing datasets field by field would compare whole image arrays.
@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Images in host memory with dense integer labels.

  Attributes:
    images: uint8 [N, H, W, C] (C = 1 for grey-scale sets).
    labels: int32 [N], values in 0..len(class_names)-1.
    class_names: name of each label value.
    filenames: optional name of each image in the published files, used to
      match reference label lists.
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  filenames: list[str] | None = None

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(
          f'ImageDataset.images must be uint8 [N,H,W,C], got {self.images.dtype} '
          f'{self.images.shape}.'
      )
    if self.labels.dtype != np.int32 or self.labels.shape != (len(self.images),):
      raise ValueError(
          f'ImageDataset.labels must be int32 [{len(self.images)}], got '
          f'{self.labels.dtype} {self.labels.shape}.'
      )
    if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
      raise ValueError(
          f'ImageDataset.labels must lie in 0..{len(self.class_names) - 1} '
          f'(one per class name), got {self.labels.min()}..{self.labels.max()}.'
      )
    if self.filenames is not None and len(self.filenames) != len(self.images):
      raise ValueError(
          f'ImageDataset.filenames has {len(self.filenames)} entries for '
          f'{len(self.images)} images.'
      )

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def subset(self, indices: np.ndarray) -> ImageDataset:
    """The images at `indices`, labels unchanged."""
    indices = np.asarray(indices)
    return ImageDataset(
        images=self.images[indices],
        labels=self.labels[indices],
        class_names=list(self.class_names),
        filenames=(None if self.filenames is None else [self.filenames[i] for i in indices]),
    )

  def select_classes(self, class_names: Sequence[str]) -> ImageDataset:
    """The images of `class_names`, relabelled 0..k-1 in the order given."""
    position = {name: i for i, name in enumerate(self.class_names)}
    missing = [name for name in class_names if name not in position]
    if missing:
      raise ValueError(
          f'Classes {missing} are not in this dataset; it has {self.class_names[:5]}'
          f'{"..." if self.num_classes > 5 else ""} ({self.num_classes} classes).'
      )
    old_to_new = np.full(self.num_classes, -1, np.int32)
    for new, name in enumerate(class_names):
      old_to_new[position[name]] = new
    new_labels = old_to_new[self.labels]
    keep = np.flatnonzero(new_labels >= 0)
    return ImageDataset(
        images=self.images[keep],
        labels=new_labels[keep],
        class_names=list(class_names),
        filenames=(None if self.filenames is None else [self.filenames[i] for i in keep]),
    )


def concatenate(datasets: Sequence[ImageDataset]) -> ImageDataset:
  """Joins datasets that share the same class names."""
  first = datasets[0]
  for other in datasets[1:]:
    if other.class_names != first.class_names:
      raise ValueError('Only datasets with the same class names can be joined.')
  with_names = all(d.filenames is not None for d in datasets)
  return ImageDataset(
      images=np.concatenate([d.images for d in datasets]),
      labels=np.concatenate([d.labels for d in datasets]),
      class_names=list(first.class_names),
      filenames=([f for d in datasets for f in d.filenames] if with_names else None),
  )


def dense_labels(raw: Sequence[object]) -> tuple[np.ndarray, list]:
  """Maps arbitrary label values to 0..C-1 in sorted order of the values."""
  values, dense = np.unique(np.asarray(raw), return_inverse=True)
  return dense.astype(np.int32).reshape(-1), values.tolist()


def check_image_array(
    array: object,
    source: str,
    *,
    height: int | None = None,
    width: int | None = None,
    channels: int | None = None,
    ndim: int = 4,
) -> np.ndarray:
  """Returns `array` if it is uint8 with the expected shape, else names `source`."""
  if not isinstance(array, np.ndarray):
    raise ValueError(
        f'{source}: expected a numpy uint8 image array, found ' f'{type(array).__name__}.'
    )
  expected = [None, height, width, channels][:ndim]
  shape_ok = array.ndim == ndim and all(e is None or s == e for s, e in zip(array.shape, expected))
  if array.dtype != np.uint8 or not shape_ok:
    want = 'x'.join('N' if e is None else str(e) for e in expected)
    raise ValueError(
        f'{source}: expected uint8 images of shape {want}, found '
        f'{array.dtype} {array.shape}; the file is corrupt or not '
        f'in the published format.'
    )
  return array
