"""Figures: image summaries read back by TensorBoard, curves from event files, class activation
maps by hand, smoke runs of both trainers leaving their figures, the GAP-vs-DC command."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from fsl import figures as fsl_figures
from fsl import train as fsl_train
from groundwork import figures
from groundwork import training
from groundwork.training.metric_log import png_size, read_scalars
from semisup import figures as ssl_figures
from semisup import train as ssl_train

ROOT = pathlib.Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = os.environ.get('OMNIGLOT_DIR', str(ROOT.parent / 'shared' / 'data' / 'omniglot'))
FASHION_DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
needs_omniglot = pytest.mark.skipif(
    not os.path.exists(os.path.join(OMNIGLOT_DIR, 'images_background_small1.zip')),
    reason=f'Omniglot zips not found in {OMNIGLOT_DIR} (set OMNIGLOT_DIR)',
)
needs_fashion = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_DIR, 'train-images-idx3-ubyte.gz')),
    reason=f'Fashion-MNIST IDX files not in {FASHION_DIR}',
)


def _config(kind: str, arg: str, **overrides):
  folder, name = {'fsl': ('fsl', 'dense_classification'), 'ssl': ('ssl', 'semi_supervised')}[kind]
  sys.path.insert(0, str(ROOT / 'configs' / folder))
  module = __import__(name)
  config = module.get_config(arg)
  config.data_dir = OMNIGLOT_DIR if kind == 'fsl' else FASHION_DIR
  config.update_from_flattened_dict(overrides)
  return config


def _images_in_tensorboard(logdir) -> dict:
  """tag -> [(step, width, height, PNG bytes)], read by TensorBoard's own loader."""
  accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={'images': 0})
  accumulator.Reload()
  return {
      tag: [(i.step, i.width, i.height, i.encoded_image_string) for i in accumulator.Images(tag)]
      for tag in accumulator.Tags()['images']
  }


# ----------------------------------------------------------------------------
# Event files: images in, scalars out.
# ----------------------------------------------------------------------------
def test_image_summary_reads_back_in_tensorboard_without_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  figure = figures.new_figure(2.0, 1.5)
  figure.subplots().plot([0, 1], [1, 0])
  png = figures.png_bytes(figure)
  assert png_size(png) == (200, 150)  # 2 x 1.5 inches at 100 dpi.
  training.MetricLogger(str(tmp_path), 7, prefix='figures').log_image(7, 'curve', png)
  assert _images_in_tensorboard(tmp_path) == {'figures/curve': [(7, 200, 150, png)]}


def test_image_summary_refuses_what_is_not_png():
  with pytest.raises(ValueError, match='not a PNG image'):
    png_size(b'GIF89a' + bytes(30))


def test_scalars_read_back_keep_the_last_value_of_a_relogged_step(tmp_path):
  first = training.MetricLogger(str(tmp_path), 4)
  first.log(1, {'loss': 4.0})
  first.log(2, {'loss': 3.0})
  # A resumed run re-logs step 2 and goes on, in a file of its own.
  second = training.MetricLogger(str(tmp_path), 4)
  second.log(2, {'loss': 2.5})
  second.log(3, {'loss': 2.0, 'lr': 0.5})
  # A record cut short (a killed writer) is left out.
  (tmp_path / 'events.out.tfevents.0000000001.host.1.0').write_bytes(
      b'\x40' + bytes(11) + b'partial'
  )
  curves = read_scalars(str(tmp_path))
  assert curves['train/loss'] == [(1, 4.0), (2, 2.5), (3, 2.0)]
  assert curves['train/lr'] == [(3, 0.5)]
  assert set(curves) == {'train/loss', 'train/lr', 'train/steps_per_sec'}


# ----------------------------------------------------------------------------
# Drawing: deterministic, the switch, hand-computed pieces.
# ----------------------------------------------------------------------------
def test_learning_curves_are_deterministic_and_shift_stages():
  curves = {
      'supervised/loss': [(1, 2.0), (10, 1.0)],
      'dlp/loss': [(1, 1.5), (5, 0.5)],
      'dlp/test_error': [(5, 0.2)],
      'dlp/lr': [(1, 0.1), (5, 0.05)],
      'dlp/steps_per_sec': [(5, 9.0)],
  }
  offsets = ssl_figures.stage_offsets(curves, ('supervised', 'dlp'))
  assert offsets == {'supervised': 0, 'dlp': 10}
  one = figures.learning_curves(curves, offsets, title='run')
  assert [ax.get_title() for ax in one.axes] == ['loss', 'accuracy / error', 'learning rate']
  dlp_loss = [line for line in one.axes[0].lines if line.get_label() == 'dlp/loss'][0]
  np.testing.assert_array_equal(dlp_loss.get_xdata(), [11, 15])
  assert figures.png_bytes(one) == figures.png_bytes(
      figures.learning_curves(curves, offsets, 'run')
  )


def test_figures_off_writes_nothing(tmp_path):
  config = _config('fsl', 'smoke', figures=False)
  fsl_figures.write_run_figures(config, str(tmp_path), embed=None, novel=None, step=1)
  config = _config('ssl', 'smoke', figures=False)
  ssl_figures.write_run_figures(config, str(tmp_path), None, None, None, None, None)
  assert list(tmp_path.iterdir()) == []


def test_cam_images_are_drawn_from_the_seed_alone():
  labels = np.repeat(np.arange(8), 4)
  query, support = fsl_figures.cam_images(labels, count=3, shots=5, seed=0)
  assert support.shape == (3, 3)  # Four images per class: one query and three supports.
  for q, s in zip(query, support):
    assert len({q, *s}) == 4 and set(labels[[q, *s]]) == {labels[q]}
  assert len(set(labels[query])) == 3
  again = fsl_figures.cam_images(labels, count=3, shots=5, seed=0)
  np.testing.assert_array_equal(query, again[0])
  np.testing.assert_array_equal(support, again[1])
  assert not np.array_equal(query, fsl_figures.cam_images(labels, 3, 5, seed=1)[0])


def test_class_activation_maps_are_cosines_to_the_own_prototype():
  # Two classes, one shot each: supports point along e0 and e1. The query of class 0 has
  # positions along e0, e1 and e0 + e1: cosines 1, 0 and 1/sqrt(2) to its prototype e0.
  e0, e1 = np.eye(2, dtype=np.float32)
  maps = np.zeros((4, 1, 3, 2), np.float32)
  maps[0], maps[1] = e0, e1  # Supports: constant maps.
  maps[2, 0] = [e0, e1, e0 + e1]  # Query of class 0.
  maps[3, 0] = [e1, e1, 2 * e1]  # Query of class 1.

  def embed(batch):  # Images are indices into `maps` here.
    chosen = maps[batch[:, 0]]
    return chosen.mean(axis=(1, 2)), chosen

  images = np.arange(4)[:, None]
  cams, scores = fsl_figures.class_activation_maps(
      embed, images, query=np.asarray([2, 3]), support=np.asarray([[0], [1]])
  )
  np.testing.assert_allclose(cams[0, 0], [1.0, 0.0, 1 / np.sqrt(2)], atol=1e-6)
  np.testing.assert_allclose(cams[1, 0], [1.0, 1.0, 1.0], atol=1e-6)
  # Pooled query 0 is (2, 2)/3: cosine 1/sqrt(2) to e0.
  np.testing.assert_allclose(scores, [1 / np.sqrt(2), 1.0], atol=1e-6)


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
  counts = figures.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
  np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_tsne_is_deterministic_for_a_seed():
  rng = np.random.default_rng(0)
  points = np.repeat(np.eye(3), 20, axis=0) + 0.05 * rng.normal(size=(60, 3))
  one, two = ssl_figures.tsne(points, 0), ssl_figures.tsne(points, 0)
  np.testing.assert_array_equal(one, two)
  assert one.shape == (60, 2)


def test_without_propagation_the_student_predictions_are_shown():
  class Train:
    labels = np.asarray([0, 1, 1, 0])
    images = np.zeros((4, 1))

  logits = np.asarray([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 0.0]], np.float32)
  fns = type('Fns', (), {'student': staticmethod(lambda state, b: (logits[: len(b)], None))})
  config = _config('ssl', 'smoke,method=mt')
  labels, certainty, what = ssl_figures.assigned_labels(
      config, None, None, fns, Train, labeled_idx=np.asarray([0])
  )
  assert what == 'predicted label'
  np.testing.assert_array_equal(labels, [0, 1, 0, 0])  # Image 0 keeps its own label.
  assert certainty[0] == 1.0 and certainty[3] == 0.0  # A uniform softmax: no certainty.
  np.testing.assert_allclose(certainty[1], certainty[2])


# ----------------------------------------------------------------------------
# Smoke runs: figures on disk and in TensorBoard, the side-by-side command.
# ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def fewshot_workdirs(tmp_path_factory):
  if not os.path.exists(os.path.join(OMNIGLOT_DIR, 'images_background_small1.zip')):
    pytest.skip(f'Omniglot zips not found in {OMNIGLOT_DIR}')
  workdirs = {}
  for head in ('gap', 'dc'):
    workdirs[head] = tmp_path_factory.mktemp(head)
    fsl_train.train_and_evaluate(_config('fsl', f'smoke,head={head}'), str(workdirs[head]))
  return workdirs


@needs_omniglot
def test_fewshot_smoke_run_leaves_its_figures(fewshot_workdirs):
  workdir = fewshot_workdirs['dc']
  written = sorted(p.name for p in (workdir / 'figures').iterdir())
  assert written == [
      'class_activation_maps.npz',
      'class_activation_maps.png',
      'learning_curves.png',
  ]
  step = json.loads((workdir / 'finished.json').read_text())['step']
  images = _images_in_tensorboard(workdir)
  assert set(images) == {'figures/learning_curves', 'figures/class_activation_maps'}
  for tag, [(at, _, _, png)] in images.items():
    assert at == step
    assert png == (workdir / 'figures' / (tag.split('/')[1] + '.png')).read_bytes()
  record = fsl_figures.read_cam_record(str(workdir))
  count = fsl_figures.CAM_IMAGES
  assert record['maps'].shape == (count, 7, 7) and record['images'].shape == (count, 28, 28, 1)
  assert np.all(np.abs(record['maps']) <= 1 + 1e-5)


@needs_omniglot
def test_rerun_of_a_finished_fewshot_run_redraws_the_same_figures(fewshot_workdirs):
  workdir = fewshot_workdirs['gap']
  before = {p.name: p.read_bytes() for p in (workdir / 'figures').iterdir()}
  fsl_train.train_and_evaluate(_config('fsl', 'smoke,head=gap'), str(workdir))
  after = {p.name: p.read_bytes() for p in (workdir / 'figures').iterdir()}
  assert before.keys() == after.keys()
  for name in ('class_activation_maps.png', 'learning_curves.png'):
    assert before[name] == after[name], name


@needs_omniglot
def test_gap_and_dc_side_by_side_command(fewshot_workdirs, tmp_path):
  output = tmp_path / 'side.png'
  command = [
      sys.executable,
      'benchmarks/cam_side_by_side.py',
      f'--a={fewshot_workdirs["gap"]}',
      f'--b={fewshot_workdirs["dc"]}',
      f'--output={output}',
  ]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  width, height = png_size(output.read_bytes())
  # Three rows (images, GAP, DC) against the single run's two.
  single = png_size((fewshot_workdirs['dc'] / 'figures' / 'class_activation_maps.png').read_bytes())
  assert width == single[0] and height > single[1]

  # Maps of other images (another evaluation seed) are refused, naming the field.
  other = tmp_path / 'other'
  (other / 'figures').mkdir(parents=True)
  record = fsl_figures.read_cam_record(str(fewshot_workdirs['dc']))
  np.savez(other / 'figures' / 'class_activation_maps.npz', **{**record, 'seed': np.asarray(5)})
  command[3] = f'--b={other}'
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1
  assert 'mapped different images (seed differs: 0 vs 5)' in done.stderr


@needs_fashion
def test_semi_supervised_smoke_run_leaves_its_figures(tmp_path):
  ssl_train.train_and_evaluate(_config('ssl', 'smoke,method=dlp'), str(tmp_path))
  names = sorted(p.name for p in (tmp_path / 'figures').iterdir())
  assert names == ['confusion.png', 'embedding.png', 'learning_curves.png']
  images = _images_in_tensorboard(tmp_path)
  assert set(images) == {f'figures/{name[:-4]}' for name in names}
  for tag, [(_, width, height, png)] in images.items():
    assert (width, height) == png_size(png)
    assert png == (tmp_path / 'figures' / (tag.split('/')[1] + '.png')).read_bytes()
