"""DC+IMP: implants trained per test episode on top of a trained, frozen DC network.

Lifchitz et al., CVPR 2019, Sec. 4. Reads the kept checkpoint of a finished base
workdir trained by `fsl.train` with the dense head, then evaluates the same
fixed episode list twice: with the frozen DC network alone (prototypes of its
pooled features) and with implants trained on each episode's support set, so
the two accuracies are paired. Both per-episode accuracy lists are written to
the workdir's episode_accuracies.npz: '5way_5shot' holds DC+IMP (what results.json
reports under 'fewshot') and 'dc_5way_5shot' the frozen DC network on the same
episodes, each with the identity of its episode list.

The DC+IMP accuracies done so far are written to implant_progress.npz after every
batch of episodes; a killed or stopped run continues from there. Episode `e` always
trains its implants with `fold_in(key, e)`, so a resumed run ends with the results
of an uninterrupted one.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np

from fsl import fewshot_data
from fsl import train as base_training
from fsl.episodic_evaluation import (
    EPISODE_ACCURACIES_FILE,
    embed_in_batches,
    episode_accuracies,
    save_episode_accuracies,
    summarize,
)
from fsl.implanting import ImplantConfig, implant_batch_fn, implanted_encoder
from groundwork import backend, training
from groundwork.data import augment, augment_spec_for, make_episodes
from groundwork.data.episodes import episode_list_id
from groundwork.evaluation import mean_ci95

PROGRESS_FILE = 'implant_progress.npz'
_META = 'meta'  # The npz entry holding the run's identity; settings are named '5way_5shot'.
REPORT_EVERY_S = 10.0  # Progress lines: the first batch, then one per this many seconds.


def implant_config(
    implant: ml_collections.ConfigDict, state: training.TrainState, steps: int | None = None
) -> ImplantConfig:
  """How implants train per episode: `config.implant`'s settings (`steps` overrides its
  step count), on the platform's loop form."""
  return ImplantConfig(
      steps=steps or implant.steps,
      learning_rate=implant.learning_rate,
      optimizer=implant.optimizer,
      scoring=implant.scoring,
      # The dense loss on the support uses the scale the base classifier learned.
      scale=float(state.params['classifier']['scale']),
      unroll=backend.unroll_short_loops(),
  )


def load_base(config: ml_collections.ConfigDict):
  """The config of `config.base_workdir`, a finished dense-classification run, computing in
  this run's `config.dtype` (parameters are float32 whatever the base run computed in)."""
  config_path = os.path.join(config.base_workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(
        f'config.base_workdir={config.base_workdir!r} holds no config.json: train the DC base '
        'network first with configs/fsl/dense_classification.py (head=dc).'
    )
  base_config = ml_collections.ConfigDict(training.read_json(config_path))
  if base_config.head != 'dc':
    raise ValueError(
        f'config.base_workdir was trained with head={base_config.head!r}; '
        'implanting starts from a dense-classification (head=dc) network.'
    )
  training.check_finished(config.base_workdir, 'config.base_workdir')
  training.check_normalization(config.base_workdir, base_config.dataset, 'config.base_workdir')
  if config.data_dir:
    base_config.data_dir = config.data_dir
  base_config.dtype = training.precision_record(config)['dtype']
  return base_config


class ImplantProgress:
  """The DC+IMP accuracies of the episodes done so far, per setting, in `PROGRESS_FILE`.

  They are reused only for the same run (`run_id`: implant settings, seed, base
  checkpoint) and the same episode list; anything else starts the setting afresh.
  """

  def __init__(self, workdir: str, run_id: dict):
    self.path = os.path.join(workdir, PROGRESS_FILE)
    self.run_id = json.loads(json.dumps(run_id))  # As read back: tuples become lists.
    self.saved: dict[str, np.ndarray] = {}
    self.identities: dict[str, dict] = {}
    if os.path.exists(self.path):
      with np.load(self.path, allow_pickle=False) as f:
        meta = json.loads(str(f[_META]))
        if meta['run'] == self.run_id:
          self.identities = meta['identities']
          self.saved = {name: f[name] for name in self.identities}
        else:
          print(f'{self.path} holds episodes of other implant settings; starting afresh.')

  def done(self, name: str, identity: dict) -> np.ndarray:
    if self.identities.get(name) != identity:
      return np.zeros(0, np.float32)
    return self.saved[name]

  def save(self, name: str, identity: dict, accuracies: np.ndarray) -> None:
    """Writes atomically: a run killed while writing keeps the previous file."""
    self.saved[name], self.identities[name] = accuracies, identity
    if not training.is_main_process():  # The others hold the same accuracies.
      return
    meta = json.dumps({'run': self.run_id, 'identities': self.identities}, sort_keys=True)
    tmp = f'{self.path}.tmp'
    with open(tmp, 'wb') as f:
      np.savez(f, **self.saved, **{_META: np.asarray(meta)})
    os.replace(tmp, self.path)


def _batch_accuracies(batch_fn, episodes, start: int, size: int) -> np.ndarray:
  """Accuracies of episodes start..start+size-1; a short last batch is padded with repeats
  of the last episode (dropped), so every call has one shape and compiles once."""
  total = len(episodes.support_idx)
  ids = np.minimum(np.arange(start, start + size), total - 1).astype(np.int32)
  arrays = (
      episodes.support_idx,
      episodes.query_idx,
      episodes.support_labels,
      episodes.query_labels,
  )
  accuracies = batch_fn(*(np.asarray(a)[ids] for a in arrays), ids)
  return np.asarray(accuracies, np.float32)[: min(size, total - start)]


def smaller_batch(error: Exception, batch: int) -> int:
  """Half `batch` when `error` is the device running out of memory on a batch of episodes
  (one process only: several would have to agree); otherwise `error` is raised again."""
  out_of_memory = isinstance(error, jax.errors.JaxRuntimeError) and 'RESOURCE_EXHAUSTED' in str(
      error
  )
  if not out_of_memory or batch <= 1 or jax.process_count() > 1:
    raise error
  print(
      f'DC+IMP: {batch} episodes per batch do not fit in the device memory; trying '
      f'{batch // 2} (--config.eval.batch_episodes={batch // 2} starts there; the accuracies '
      'do not depend on it).',
      flush=True,
  )
  return batch // 2


def check_config(config: ml_collections.ConfigDict) -> None:
  """The settings alone, before the base run or any data is read."""
  if not config.base_workdir:
    raise ValueError('config.base_workdir is empty: set it to a finished DC (head=dc) workdir.')
  for field in ('eval.n_way', 'eval.episodes', 'eval.batch_episodes', 'implant.steps'):
    section, name = field.split('.')
    if config[section][name] < 1:
      raise ValueError(f'config.{field}={config[section][name]} must be at least 1.')
  if config.eval.n_query < 1 or min(config.eval.shots) < 1:
    raise ValueError(
        f'config.eval.n_query={config.eval.n_query} and every config.eval.shots '
        f'{tuple(config.eval.shots)} must be at least 1.'
    )
  if config.implant.learning_rate <= 0:
    raise ValueError(f'config.implant.learning_rate={config.implant.learning_rate} must be > 0.')


@training.with_matmul_precision
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict:
  check_config(config)
  # The workdir's lock, a write probe and its config.json's check, before any data is read.
  run = training.start_run(workdir, config, allow_config_change)
  base_config = load_base(config)
  data = fewshot_data.load(base_config)
  fewshot_data.check_episodes_fit(
      data.novel, 'novel', config.eval.n_way, config.eval.shots, config.eval.n_query
  )
  model = base_training.build_model(base_config, data.num_base_classes)
  implanted = implanted_encoder(
      model.encoder, tuple(config.implant.layers), config.implant.width
  )  # Checks the layers before any compile.
  tx, _ = training.make_optimizer(base_config.optim, 1)
  template = base_training.create_state(base_config, model, data.base.images.shape[1:], tx)
  restored = training.Checkpointer(config.base_workdir, subdir='kept').restore(template)
  if restored is None:
    raise FileNotFoundError(
        f'no checkpoint in {config.base_workdir}/kept: the base run did '
        'not finish; rerun its train command to resume it.'
    )
  state, _, base_step = restored
  run.save_config()  # Every check has passed, the base checkpoint's included.

  mesh = training.data_mesh()
  frozen = {'params': state.params['encoder'], 'batch_stats': state.batch_stats['encoder']}
  frozen = training.replicate(frozen, mesh)
  settings = implant_config(config.implant, state)
  spec = augment_spec_for(base_config.dataset, train=False)
  embed = base_training.embed_fn(state, base_config)
  pooled = embed_in_batches(lambda b: embed(b)[0], data.novel.images, 256)
  batch_fn = implant_batch_fn(
      implanted,
      frozen,
      training.replicate(data.novel.images, mesh),
      training.seed_key(config.seed),
      settings,
      config.eval.n_way,
      input_fn=lambda x: augment.normalize(x, spec.mean, spec.std),
  )
  # Each batch's episodes split over the devices (of all processes); every process gets
  # all their accuracies.
  batch_fn = training.data_parallel(batch_fn, mesh)
  progress = ImplantProgress(
      workdir,
      {
          'implant': config.implant.to_dict(),
          'seed': config.seed,
          'base_workdir': os.path.abspath(config.base_workdir),
          'base_step': int(base_step),
          'precision': training.precision_record(config),
      },
  )
  results = {'fewshot': {}, 'dc_same_episodes': {}, 'paired_gain': {}}
  per_episode = {}
  batch = config.eval.batch_episodes  # Halved while a batch does not fit in the device.
  with training.StopRequest() as stop:
    for k_shot in config.eval.shots:
      name = f'{config.eval.n_way}way_{k_shot}shot'
      episodes = make_episodes(
          data.novel.labels,
          config.eval.n_way,
          k_shot,
          config.eval.n_query,
          config.eval.episodes,
          config.eval.seed,
      )
      identity = episode_list_id(episodes, config.eval.seed)
      dc = episode_accuracies(pooled, episodes, n_way=config.eval.n_way)
      imp = progress.done(name, identity)
      total, resumed = config.eval.episodes, len(imp)
      print(
          f'DC+IMP {name}: training implants on {total} episodes'
          + (f', resuming after {resumed} done ({progress.path}).' if resumed else '...'),
          flush=True,
      )
      started = last_report = time.monotonic()
      while len(imp) < total:
        try:
          done = _batch_accuracies(batch_fn, episodes, len(imp), batch)
        except jax.errors.JaxRuntimeError as error:
          batch = smaller_batch(error, batch)
          continue
        first = len(imp) == resumed
        imp = np.concatenate([imp, done])
        progress.save(name, identity, imp)
        now = time.monotonic()
        if first or len(imp) == total or now - last_report >= REPORT_EVERY_S:
          rate = (len(imp) - resumed) / max(now - started, 1e-9)
          print(
              f'  DC+IMP {name}: episodes {len(imp)}/{total}, {rate:.2f} episodes/s, '
              f'ETA {(total - len(imp)) / rate / 60:.1f} min',
              flush=True,
          )
          last_report = now
        if stop.requested and len(imp) < total:
          stop.stop(len(imp), progress.path)
      # DC+IMP under the plain setting name, so pairing with a base workdir's file compares
      # DC+IMP against that method; 'dc_' + name keeps the DC accuracies it is paired with.
      per_episode[name], per_episode[f'dc_{name}'] = (imp, identity), (dc, identity)
      results['fewshot'][name] = summarize(imp)
      results['dc_same_episodes'][name] = summarize(dc)
      gain, gain_ci = mean_ci95(imp - dc)
      results['paired_gain'][name] = {'accuracy': gain, 'ci95': gain_ci}
      print(
          f'{name}: DC {100 * dc.mean():.2f}%  DC+IMP {100 * imp.mean():.2f}%  '
          f'gain {100 * gain:+.2f} ± {100 * gain_ci:.2f} (paired, {len(imp)} episodes)'
      )
  results['precision'] = training.precision_record(config)
  if training.is_main_process():  # Every process holds the same results; one writes.
    save_episode_accuracies(os.path.join(workdir, EPISODE_ACCURACIES_FILE), per_episode)
    training.write_json(os.path.join(workdir, 'results.json'), results)
  run.finish(config.eval.episodes * len(config.eval.shots))
  return results


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, output_dir: str | None = None
) -> dict:
  """Implants are trained at test time: evaluating is the run itself, in `output_dir` (its
  own progress, config and results) when given, else in the workdir, where the episodes
  already done are reused."""
  return train_and_evaluate(config, output_dir or workdir)
