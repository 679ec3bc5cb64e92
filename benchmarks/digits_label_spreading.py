"""DLP against scikit-learn's LabelSpreading on scikit-learn's digits, same labelled set.

  python benchmarks/digits_label_spreading.py --labels=100 [--dlp_workdir=workdirs/digits_dlp]

Both graph methods see the same seeded balanced labelled images of the same
seeded train/test split (the config's `seed`, as the trainer draws them):
- LabelSpreading (kNN kernel, k=`--k`, alpha=`--alpha`), fit transductively on
  the training pixels, test error from `predict` on the test images;
- this project's `label_propagation` on the same pixels (L2-normalised), test
  error by the propagated label of each test image's nearest training image;
- the deep DLP run of configs/ssl/semi_supervised.py:dataset=digits, read from
  `--dlp_workdir`/results.json when given.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np
from sklearn.semi_supervised import LabelSpreading

from groundwork.data import balanced_labeled_indices, load_digits
from groundwork.knn import l2_normalize
from semisup.label_propagation import label_propagation

_LABELS = flags.DEFINE_integer('labels', 100, 'Labelled training images (balanced).')
_SEED = flags.DEFINE_integer('seed', 0, 'Split and label seed (the config seed).')
_K = flags.DEFINE_integer('k', 10, 'Neighbours of both graphs.')
_ALPHA = flags.DEFINE_float('alpha', 0.99, 'Diffusion alpha of both methods.')
_DLP_WORKDIR = flags.DEFINE_string('dlp_workdir', '', 'A finished digits DLP workdir.')
_OUT = flags.DEFINE_string('out', '', 'Optional JSON output path.')


def main(argv):
  del argv
  train, test = load_digits(_SEED.value)
  labeled = balanced_labeled_indices(train.labels, _LABELS.value, _SEED.value)
  x_train = train.images.reshape(len(train.images), -1).astype(np.float32) / 255.0
  x_test = test.images.reshape(len(test.images), -1).astype(np.float32) / 255.0
  y = np.full(len(x_train), -1)
  y[labeled] = train.labels[labeled]

  start = time.perf_counter()
  spreading = LabelSpreading(
      kernel='knn', n_neighbors=_K.value, alpha=_ALPHA.value, max_iter=1000
  ).fit(x_train, y)
  spreading_time = time.perf_counter() - start
  spreading_error = float(np.mean(spreading.predict(x_test) != test.labels))

  start = time.perf_counter()
  result = label_propagation(x_train, y, y >= 0, train.num_classes, k=_K.value, alpha=_ALPHA.value)
  lp_time = time.perf_counter() - start
  pseudo = np.asarray(result.pseudo_labels)
  nearest = np.argmax(l2_normalize(x_test) @ l2_normalize(x_train).T, axis=1)
  lp_error = float(np.mean(pseudo[nearest] != test.labels))
  unlabeled = y < 0
  rows = {
      'label_spreading': {
          'test_error': spreading_error,
          'seconds': spreading_time,
          'transductive_accuracy': float(
              np.mean(spreading.transduction_[unlabeled] == train.labels[unlabeled])
          ),
      },
      'label_propagation_pixels': {
          'test_error': lp_error,
          'seconds': lp_time,
          'transductive_accuracy': float(np.mean(pseudo[unlabeled] == train.labels[unlabeled])),
      },
  }
  if _DLP_WORKDIR.value:
    dlp = json.load(open(os.path.join(_DLP_WORKDIR.value, 'results.json')))
    rows['deep_label_propagation'] = {
        'test_error': dlp['test']['error'],
        'transductive_accuracy': dlp['pseudo_label_accuracy'],
    }
  print(
      f'digits: {len(x_train)} train / {len(x_test)} test images, {_LABELS.value} labels, '
      f'seed {_SEED.value}, k={_K.value}, alpha={_ALPHA.value}'
  )
  print(f'{"method":<28}{"test error %":>14}{"pseudo-label acc %":>20}')
  for name, row in rows.items():
    print(f'{name:<28}{100 * row["test_error"]:>14.2f}{100 * row["transductive_accuracy"]:>20.2f}')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  app.run(main)
