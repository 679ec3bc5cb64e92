"""A trained few-shot workdir on one's own images: `load_trained(workdir)`.

    from fsl.trained import load_trained
    model = load_trained('workdirs/omniglot_conv4_dc')
    model.classify_by_support(query_files, support_files, support_labels)

The returned `FewShotModel` embeds images (pooled features and feature maps), classifies
them among the base classes with the trained head, and classifies them among new classes
by prototypes imprinted from a support set, as the evaluation does (`fsl.prototypes`,
scored as `config.eval.scoring` says). The weights are the kept checkpoint (`kept/`), the
one the evaluation reports. docs/figures.md has a worked example.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence

import jax.numpy as jnp
import numpy as np

from fsl.prototypes import classify_by_prototypes, dense_scores, imprint_prototypes
from groundwork import trained
from groundwork.trained import ImagesLike, Predictions

CHECKPOINT = 'kept'
SCORINGS = ('pooled', 'dense')


def model_description(config, base) -> dict:
  """model.json of a few-shot run trained on the `base` ImageDataset."""
  return trained.describe_model(
      config.dataset, base.class_names, base.images.shape[1:], checkpoint=CHECKPOINT
  )


class FewShotModel(trained.TrainedModel):
  """A trained few-shot network; adds classification by a support set's prototypes."""

  def prototypes(self, support: ImagesLike, labels: Sequence[Hashable]) -> tuple[np.ndarray, list]:
    """`(prototypes [n, C], the n labels in order of first appearance)` imprinted from the
    support images' pooled features: each class's L2-normalised mean direction."""
    features = self.embed(support)
    if len(labels) != len(features):
      raise ValueError(
          f'{len(features)} support images but {len(labels)} support labels: give one label '
          'per image.'
      )
    classes = list(dict.fromkeys(labels))
    index = jnp.asarray([classes.index(label) for label in labels])
    return np.asarray(imprint_prototypes(jnp.asarray(features), index, len(classes))), classes

  def classify_by_support(
      self,
      queries: ImagesLike,
      support: ImagesLike,
      labels: Sequence[Hashable],
      scoring: str | None = None,
  ) -> Predictions:
    """Each query's support class and its cosines to every class's prototype.

    `scoring`: 'pooled' (the pooled feature's cosine, the paper's test rule) or 'dense'
    (every position's cosine, averaged); default the run's `config.eval.scoring`.
    """
    scoring = scoring or self.config.eval.scoring
    if scoring not in SCORINGS:
      raise ValueError(f'scoring={scoring!r} is not one of {list(SCORINGS)}.')
    prototypes, classes = self.prototypes(support, labels)
    _, pooled, maps = self.outputs(queries)
    if scoring == 'dense':
      scores = dense_scores(jnp.asarray(maps), prototypes)
    else:
      scores = classify_by_prototypes(jnp.asarray(pooled), prototypes)
    scores = np.asarray(scores)
    indices = scores.argmax(axis=-1)
    return Predictions([classes[i] for i in indices], indices, scores)


def load_trained(workdir: str) -> FewShotModel:
  """The network of a few-shot workdir (launch/train.py with configs/fsl/dense_classification.py)
  with its kept weights."""
  # The trainer imports this module (model_description); its own import waits until here.
  from fsl import train  # pylint: disable=import-outside-toplevel
  from groundwork import training  # pylint: disable=import-outside-toplevel

  config, description = trained.read_workdir(workdir)
  if config.get('trainer') != 'fsl':
    raise ValueError(
        f'{workdir} was trained by config.trainer={config.get("trainer")!r}; fsl.trained loads '
        "'fsl' workdirs (semisup.trained loads 'ssl' ones)."
    )
  model = train.build_model(config, description['num_classes'])
  tx, _ = training.make_optimizer(config.optim, 1)
  template = train.create_state(config, model, tuple(description['image_shape']), tx)
  directory = os.path.join(workdir, description['checkpoint'])
  restored = (
      training.Checkpointer(workdir, subdir=description['checkpoint']).restore(template)
      if os.path.isdir(directory)
      else None
  )
  if restored is None:
    raise FileNotFoundError(
        f'no checkpoint in {directory}: its run kept none yet; finish it with its train command.'
    )
  state, _, step = restored

  def forward(variables, x):
    logits, out = model.apply(variables, x, train=False)
    if logits.ndim == 4:  # Dense classification: the positions' logits averaged.
      logits = logits.mean(axis=(1, 2))
    return logits, out['pooled'], out['feature_map']

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return FewShotModel(workdir, config, description, variables, forward, step)
