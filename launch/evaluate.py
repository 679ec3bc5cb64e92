r"""Evaluates a finished workdir with its own config.json; prints the table.

  python launch/evaluate.py --workdir=workdirs/omniglot_dc \
      [--config.eval.episodes=1000] [--output=/tmp/omniglot_dc_eval]

--config.field=value may change what is safe to change (evaluation settings,
data_dir); a --config=file must describe the same run, by the same method.
An unfinished workdir, or one trained by another method, is refused, naming why.
Results go to the workdir, or to --output for a read-only or shared workdir.
"""

from trainers import launch_evaluate

if __name__ == '__main__':
  launch_evaluate()
