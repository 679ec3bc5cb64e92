"""A trained semi-supervised workdir on one's own images: `load_trained(workdir)`.

    from semisup.trained import load_trained
    model = load_trained('workdirs/fmnist_mt_dlp', teacher=True)
    model.classify(['shoe.png', 'shirt.png'])

The returned `TrainedModel` embeds images (the pooled features label propagation uses,
L2-normalised where the run normalises them, and the encoder's feature maps) and
classifies them with the trained class head, from the newest checkpoint. docs/figures.md
has the few-shot example; the calls are the same.
"""

from __future__ import annotations

import os

from groundwork import trained, training
from semisup.classifier import build_model, create_state
from semisup.stages import MEAN_TEACHER_STAGES, METHODS, initial_extra

CHECKPOINT = 'checkpoints'


def model_description(config, train) -> dict:
  """model.json of a run on the `train` ImageDataset; the checkpoint's template needs the
  number of training images (its pseudo-labels)."""
  return trained.describe_model(
      config.dataset,
      train.class_names,
      train.images.shape[1:],
      checkpoint=CHECKPOINT,
      train_images=len(train.labels),
  )


def load_trained(workdir: str, teacher: bool = False) -> trained.TrainedModel:
  """The network of a semi-supervised workdir with its newest weights; `teacher` takes the
  Mean Teacher's (a run with a Mean Teacher stage) instead of the student's."""
  config, description = trained.read_workdir(workdir)
  if config.get('trainer') != 'ssl':
    raise ValueError(
        f'{workdir} was trained by config.trainer={config.get("trainer")!r}; semisup.trained '
        "loads 'ssl' workdirs (fsl.trained loads 'fsl' ones)."
    )
  num_classes, shape = description['num_classes'], tuple(description['image_shape'])
  template = create_state(config, num_classes, shape)
  extra = initial_extra(description['train_images'], num_classes)
  directory = os.path.join(workdir, description['checkpoint'])
  restored = (
      training.Checkpointer(workdir, subdir=description['checkpoint']).restore(template, extra)
      if os.path.isdir(directory)
      else None
  )
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {directory}: train the workdir first.')
  state, _, step = restored
  if teacher and not set(METHODS[config.method]) & set(MEAN_TEACHER_STAGES):
    raise ValueError(
        f'teacher=True: {workdir} trained config.method={config.method!r}, which has no Mean '
        "Teacher; load the student (teacher=False), or a 'mt' or 'mt_dlp' workdir."
    )
  model = build_model(config, num_classes)

  def forward(variables, x):
    # The encoder's output is recorded on the way: the class head's input and the maps at once.
    ((logits, _), pooled), seen = model.apply(
        variables,
        x,
        train=False,
        capture_intermediates=lambda module, _: module.name == 'encoder',
        mutable=['intermediates'],
    )
    feature_map = seen['intermediates']['encoder']['__call__'][0][0]
    return logits, pooled, feature_map

  params, stats = (
      (state.teacher_params, state.teacher_batch_stats)
      if teacher
      else (state.params, state.batch_stats)
  )
  return trained.TrainedModel(
      workdir, config, description, {'params': params, 'batch_stats': stats}, forward, step
  )
