r"""Evaluates the checkpoint of a trained workdir and rewrites its results.json.

  python launch/evaluate.py --config=configs/fsl/dense_classification.py:dataset=omniglot \
      --workdir=workdirs/omniglot_dc
"""

from trainers import launch

if __name__ == '__main__':
  launch('evaluate', 'Trained workdir holding checkpoints/.')
