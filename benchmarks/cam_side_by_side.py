"""Class activation maps of two few-shot runs on the same images, one row each.

  python benchmarks/cam_side_by_side.py --a=workdirs/omniglot_conv4_gap \
      --b=workdirs/omniglot_conv4_dc --output=cam_gap_vs_dc.png

Each run writes `figures/class_activation_maps.npz` (fsl/figures.py): for a few novel-class
images drawn from `config.eval.seed`, the cosine of each position of its feature map to
its class's prototype. Two runs on the same novel classes with the same evaluation seed
map the same images; other images stop the command, naming what differs. Lifchitz et al.
(CVPR 2019) expect dense classification's maps smoother and closer to the object than
GAP's.
"""

import os
import sys

from absl import app
from absl import flags

from fsl.figures import cam_figure, read_cam_record
from groundwork import figures

_A = flags.DEFINE_string('a', None, 'First workdir (top row of maps), e.g. the GAP run.')
_B = flags.DEFINE_string('b', None, 'Second workdir (bottom row), e.g. the DC run.')
_OUTPUT = flags.DEFINE_string('output', 'cam_side_by_side.png', 'Where the PNG goes.')
flags.mark_flags_as_required(['a', 'b'])

# What must agree for the two rows to map the same images, the first difference named.
SAME = ('dataset', 'seed', 'class_names', 'query', 'support', 'images')


class DifferentImages(ValueError):
  """The two runs' maps are not of the same images."""


def row_name(workdir: str, record: dict) -> str:
  return f'{str(record["head"]).upper()}\n{os.path.basename(os.path.normpath(workdir))}'


def side_by_side(a: str, b: str):
  """The figure of both runs' maps under their shared images."""
  records = [(workdir, read_cam_record(workdir)) for workdir in (a, b)]
  (_, first), (_, second) = records
  for key in SAME:
    if first[key].shape != second[key].shape or (first[key] != second[key]).any():
      raise DifferentImages(
          f'{a} and {b} mapped different images ({key} differs: '
          f'{first[key].tolist() if first[key].size < 8 else "arrays"} vs '
          f'{second[key].tolist() if second[key].size < 8 else "arrays"}); train both on the '
          'same dataset with the same config.eval.seed.'
      )
  title = f'cosine to the true class prototype, {first["dataset"]} novel classes'
  return cam_figure([(row_name(w, r), r) for w, r in records], title=title)


def main(argv):
  del argv
  try:
    figure = side_by_side(_A.value, _B.value)
  except (FileNotFoundError, DifferentImages) as error:
    sys.exit(f'error: {error}')
  with open(_OUTPUT.value, 'wb') as f:
    f.write(figures.png_bytes(figure))
  print(f'Wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
