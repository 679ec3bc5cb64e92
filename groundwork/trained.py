"""A trained workdir as an object: embed and classify images given as arrays or files.

Each project's `load_trained(workdir)` (`fsl.trained`, `semisup.trained`) builds its
network from the workdir's config.json, restores the weights and returns a
`TrainedModel`. What the weights need beyond the config is the workdir's model.json,
written with config.json at training start (`describe_model`, `Run.save_config`): the
classes and their names, the image shape, the normalisation, how image files are read,
which checkpoint.

Images are uint8 `[H, W, C]` (or `[H, W]` with one channel), a stack of them, or paths of
image files. Arrays are taken as they are, in the convention of the dataset's own loader;
files are read as that loader reads its files (grey or RGB, Omniglot's inverted so that
strokes are high) and resized to the training size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from groundwork.data.augment_spec import NORMALIZATION
from groundwork.training.files import read_json
from groundwork.training.workdir import CONFIG_FILE, MODEL_FILE

# Datasets whose loader inverts the image files (groundwork/data/omniglot.py: black strokes
# on white become high strokes on a low background).
INVERTED_FILES = ('omniglot',)
BATCH_SIZE = 256

ImagesLike = np.ndarray | str | os.PathLike | Sequence[np.ndarray | str | os.PathLike]


def describe_model(
    dataset: str, class_names: Sequence[str], image_shape: Sequence[int], checkpoint: str, **extra
) -> dict:
  """What model.json holds: with the config, all that using the weights needs.

  `checkpoint` is the folder under the workdir whose newest step holds the weights;
  `extra` adds project fields (e.g. what its checkpoint's template needs).
  """
  mean, std = NORMALIZATION[dataset]
  channels = int(image_shape[-1])
  return dict(
      dataset=dataset,
      num_classes=len(class_names),
      class_names=[str(name) for name in class_names],
      image_shape=[int(d) for d in image_shape],
      normalization=dict(mean=list(mean), std=list(std)),
      files=dict(
          mode='L' if channels == 1 else 'RGB', invert=dataset in INVERTED_FILES, resize='lanczos'
      ),
      checkpoint=checkpoint,
      **extra,
  )


def read_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  """`(config, model description)` of a trained workdir, or an error saying what is missing."""
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(
        f'{config_path} does not exist: {workdir} is not a workdir written by launch/train.py.'
    )
  model_path = os.path.join(workdir, MODEL_FILE)
  if not os.path.exists(model_path):
    raise FileNotFoundError(
        f'{model_path} does not exist: the workdir was trained before runs stored their model '
        'description. Run its train command again (same --config and --workdir): a finished '
        'run only re-evaluates, and writes model.json on the way.'
    )
  return ml_collections.ConfigDict(read_json(config_path)), read_json(model_path)


def read_image_file(path: str | os.PathLike, description: dict) -> np.ndarray:
  """One image file as uint8 `[H, W, C]`, read as the dataset's loader reads its files."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  files = description['files']
  height, width = description['image_shape'][:2]
  try:
    with Image.open(path) as image:
      image = image.convert(files['mode'])
  except OSError as error:
    raise ValueError(f'{path}: not a readable image file ({error}).') from None
  if files['invert']:
    image = Image.fromarray(255 - np.asarray(image))
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling[files['resize'].upper()])
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def as_images(images: ImagesLike, description: dict) -> np.ndarray:
  """uint8 `[N, H, W, C]` from an array of one or many images, a path, or a list of either."""
  shape = tuple(description['image_shape'])
  if isinstance(images, (str, os.PathLike)):
    images = [images]
  if isinstance(images, np.ndarray):
    if images.dtype != np.uint8:
      raise ValueError(
          f'images of dtype {images.dtype}; pass uint8 in 0..255, as the training data '
          '(e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in 0..1).'
      )
    one = images.ndim == 2 or images.shape == shape
    batch = images[None] if one else images
    if batch.ndim == 3 and shape[-1] == 1:
      batch = batch[..., None]
    if batch.shape[1:] != shape:
      raise ValueError(
          f'images of shape {images.shape}; this model takes [N, {", ".join(map(str, shape))}] '
          f'or one image {list(shape)}: resize them, or pass their files, which are resized.'
      )
    return batch
  if len(images) == 0:
    raise ValueError('no images given.')
  return np.concatenate(
      [
          (
              read_image_file(item, description)[None]
              if isinstance(item, (str, os.PathLike))
              else as_images(np.asarray(item), description)
          )
          for item in images
      ]
  )


class Predictions(NamedTuple):
  """`labels[i]` is image i's class (a name, or the support set's label); `indices[i]` its
  index; `scores [N, classes]` the probabilities (head) or cosines (prototypes)."""

  labels: list
  indices: np.ndarray
  scores: np.ndarray


class TrainedModel:
  """A restored network in eval mode: `embed`, `feature_maps`, `logits`, `classify`.

  `forward(variables, x)` maps normalised float images to `(logits [B, classes], pooled
  [B, C], feature_map [B, h, w, C])`.
  """

  def __init__(
      self,
      workdir: str,
      config: ml_collections.ConfigDict,
      description: dict,
      variables: Any,
      forward: Callable,
      step: int,
  ):
    self.workdir, self.config, self.description = workdir, config, description
    self.step = step
    self._variables = variables
    mean = np.asarray(description['normalization']['mean'], np.float32)
    std = np.asarray(description['normalization']['std'], np.float32)

    @jax.jit
    def run(variables, images):
      x = (images.astype(np.float32) / 255.0 - mean) / std
      return jax.tree.map(lambda a: a.astype(np.float32), forward(variables, x))

    self._run = run

  @property
  def class_names(self) -> list[str]:
    return list(self.description['class_names'])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.description['image_shape'])

  def images(self, images: ImagesLike) -> np.ndarray:
    """The uint8 `[N, H, W, C]` batch the network sees for `images` (files read and resized)."""
    return as_images(images, self.description)

  def outputs(self, images: ImagesLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(logits, pooled, feature_map)` of every image, in batches of BATCH_SIZE."""
    from groundwork.evaluation import map_in_batches  # pylint: disable=import-outside-toplevel

    return map_in_batches(lambda b: self._run(self._variables, b), self.images(images), BATCH_SIZE)

  def embed(self, images: ImagesLike) -> np.ndarray:
    """Pooled features `[N, C]`, the ones the evaluation and label propagation use."""
    return self.outputs(images)[1]

  def feature_maps(self, images: ImagesLike) -> np.ndarray:
    """The encoder's last feature maps `[N, h, w, C]`."""
    return self.outputs(images)[2]

  def logits(self, images: ImagesLike) -> np.ndarray:
    """The trained head's logits `[N, classes]` (a dense head's averaged over positions)."""
    return self.outputs(images)[0]

  def classify(self, images: ImagesLike) -> Predictions:
    """The trained head's classes (names from model.json) and softmax probabilities."""
    probabilities = np.asarray(jax.nn.softmax(self.logits(images), axis=-1))
    indices = probabilities.argmax(axis=-1)
    return Predictions([self.class_names[i] for i in indices], indices, probabilities)
