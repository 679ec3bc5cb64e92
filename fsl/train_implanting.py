"""DC+IMP: implants trained per test episode on top of a trained, frozen DC network.

Lifchitz et al., CVPR 2019, Sec. 4. Reads the kept checkpoint of a base
workdir trained by `fsl.train` with the dense head, then evaluates the same
fixed episode list twice: with the frozen DC network alone (prototypes of its
pooled features) and with implants trained on each episode's support set, so
the two accuracies are paired. Both per-episode accuracy lists are written to
the workdir's episode_accuracies.npz: '5way_5shot' holds DC+IMP (what results.json
reports under 'fewshot') and 'dc_5way_5shot' the frozen DC network on the same
episodes, each with the identity of its episode list.
"""

import os

import ml_collections

from fsl import fewshot_data
from fsl import train as base_training
from fsl.episodic_evaluation import (
    EPISODE_ACCURACIES_FILE,
    embed_in_batches,
    episode_accuracies,
    print_progress,
    save_episode_accuracies,
    summarize,
)
from fsl.implanting import ImplantConfig, implant_episode_accuracies, implanted_encoder
from groundwork import backend, training
from groundwork.data import augment, augment_spec_for, make_episodes
from groundwork.data.episodes import episode_list_id
from groundwork.evaluation import mean_ci95


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
  """(base config, restored TrainState, model) of `config.base_workdir`."""
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
  if config.data_dir:
    base_config.data_dir = config.data_dir
  return base_config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  base_config = load_base(config)
  data = fewshot_data.load(base_config)
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
  state = restored[0]
  os.makedirs(workdir, exist_ok=True)
  training.save_config(workdir, config)

  frozen = {'params': state.params['encoder'], 'batch_stats': state.batch_stats['encoder']}
  settings = implant_config(config.implant, state)
  spec = augment_spec_for(base_config.dataset, train=False)
  embed = base_training.embed_fn(state, base_config)
  pooled = embed_in_batches(lambda b: embed(b)[0], data.novel.images, 256)
  results = {'fewshot': {}, 'dc_same_episodes': {}, 'paired_gain': {}}
  per_episode = {}
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
    dc = episode_accuracies(pooled, episodes, n_way=config.eval.n_way)
    print(f'DC+IMP {name}: training implants on {config.eval.episodes} episodes...')
    imp = implant_episode_accuracies(
        implanted,
        frozen,
        data.novel.images,
        episodes,
        training.seed_key(config.seed),
        settings,
        input_fn=lambda x: augment.normalize(x, spec.mean, spec.std),
        batch_size=config.eval.batch_episodes,
        progress=print_progress,
    )
    identity = episode_list_id(episodes, config.eval.seed)
    # DC+IMP under the plain setting name, so pairing with a base workdir's file compares
    # DC+IMP against that method; 'dc_' + name keeps the DC accuracies it is paired with here.
    per_episode[name], per_episode[f'dc_{name}'] = (imp, identity), (dc, identity)
    results['fewshot'][name] = summarize(imp)
    results['dc_same_episodes'][name] = summarize(dc)
    gain, gain_ci = mean_ci95(imp - dc)
    results['paired_gain'][name] = {'accuracy': gain, 'ci95': gain_ci}
    print(
        f'{name}: DC {100 * dc.mean():.2f}%  DC+IMP {100 * imp.mean():.2f}%  '
        f'gain {100 * gain:+.2f} ± {100 * gain_ci:.2f} (paired, {len(imp)} episodes)'
    )
  save_episode_accuracies(os.path.join(workdir, EPISODE_ACCURACIES_FILE), per_episode)
  training.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Implants are trained at test time: evaluating is the whole run."""
  return train_and_evaluate(config, workdir)
