"""The LP-DeepSSL recipe: its table of settings, and what each of its choices does.

The reference is ahmetius/LP-DeepSSL at dd3b4aa (files and lines cited beside each value).
"""

import functools
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from groundwork import training
from groundwork.data import augment_batch, augment_spec_for
from groundwork.encoders import build_encoder
from semisup import classifier
from semisup import train as ssl_train
from semisup.stages import begin_stage

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'configs' / 'ssl'))
import semi_supervised  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.usefixtures('fast_compiles')  # Tiny models: compiling dominates.

# ---------------------------------------------------------------- the table

# Per dataset: helpers.py `load_args` (cifar100 L370-383, cifar10 L385-397, miniimagenet
# L399-417) over cli.py's defaults (-b 100 L44, --lr 0.05 L48, --evaluation-epochs 1 L75);
# labelled images per batch from README's commands (50 for cifar10, 31 otherwise);
# transforms from mean_teacher/datasets.py (cifar10 L25-39, cifar100 L63-75, miniimagenet
# L104-118, with and without Mean Teacher's two views); heads from
# mean_teacher/architectures.py (CNN L83-86, ResNet L176 and L186).
REFERENCE_DATASETS = {
    'cifar10': dict(
        encoder='cnn13',
        heads=('weight_norm', 'weight_norm'),
        batch_size=100,
        labeled_batch_size=50,
        lr=0.05,
        ema_decay=0.97,  # helpers.py L390.
        augment=dict(translate=4, flip=True, crop_padding=0, rotate_degrees=0.0),
        eval_every_epochs=1,
    ),
    'cifar100': dict(
        encoder='cnn13',
        heads=('weight_norm', 'weight_norm'),
        batch_size=128,  # helpers.py L371.
        labeled_batch_size=31,
        lr=0.2,  # helpers.py L372.
        ema_decay=0.97,  # helpers.py L377.
        augment=dict(translate=4, flip=True, crop_padding=0, rotate_degrees=0.0),
        eval_every_epochs=1,
    ),
    'miniimagenet': dict(
        encoder='resnet18',  # helpers.py L417.
        heads=('linear', 'weight_norm'),
        batch_size=128,  # helpers.py L405.
        labeled_batch_size=31,
        lr=0.2,  # helpers.py L406.
        ema_decay=0.97,  # helpers.py L411.
        # RandomRotation(10) (nearest), RandomCrop(84, padding=8), flip: datasets.py L112-118.
        augment=dict(translate=0, flip=True, crop_padding=8, rotate_degrees=10.0, rotate_order=0),
        eval_every_epochs=30,  # helpers.py L402.
    ),
}
# The same for every dataset and method.
REFERENCE_COMMON = {
    'epochs.supervised': 180,  # helpers.py L375/L388/L404, train_stage2.py's 180 again.
    'epochs.mt': 180,
    'epochs.dlp': 180,
    'epochs.mt_dlp': 180,
    'optim.rampdown_ratio': 210 / 180,  # --lr-rampdown-epochs 210.
    'optim.initial_lr': 0.0,  # cli.py L50.
    'optim.rampup_epochs': 0,  # cli.py L52.
    'optim.momentum': 0.9,  # cli.py L56.
    'optim.nesterov': True,  # cli.py L58.
    'optim.weight_decay': 2e-4,  # helpers.py L381/L394/L415.
    'mt.consistency': 100.0,  # helpers.py L380.
    'mt.consistency_rampup': 5,  # cli.py L69.
    'mt.logit_distance_cost': 0.01,  # helpers.py L379.
    # Each teacher is a model of its own (train_stage1.py L72, train_stage2.py L70: a new
    # create_model, its parameters never copied from the student).
    'mt.teacher_init': 'random',
    'lp.k': 50,  # cli.py L87 --dfs-k.
    'lp.gamma': 3.0,  # db_semisuper.py L288: D ** 3.
    'lp.alpha': 0.99,  # db_semisuper.py L264.
    'lp.cg_iterations': 20,  # train_stage2.py L104 max_iter=20.
    'lp.clip_negative': False,  # db_semisuper.py L288 cubes the similarities unclipped.
    # The graph's features: extract_features over train_loader_noshuff, a loader of the
    # training dataset and its training transform (helpers.py L64, L89-94, L339-364).
    'lp.features_from': 'augmented',
    # train_stage2.py L89 loads stage 1's optimizer state; L70 builds a new teacher and
    # global_step restarts at 0 (L39), so its average restarts.
    'stage2_optimizer': 'continue',
    'stage2_teacher': 'fresh',
}
# --isL2: True in README's commands without Mean Teacher, False with it.
REFERENCE_NORMALIZE = {'supervised': True, 'dlp': True, 'mt': False, 'mt_dlp': False}
# The paper's tables: the labelled-image counts of each dataset.
PAPER_TABLES = {
    'cifar10': (500, 1000, 4000),
    'cifar100': (4000, 10000),
    'miniimagenet': (4000, 10000),
}


def _flat(config: ml_collections.ConfigDict) -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f'{key}.{k}': v for k, v in _flat(value).items()})
    else:
      out[key] = value
  return out


@pytest.mark.parametrize('dataset', sorted(PAPER_TABLES))
@pytest.mark.parametrize('method', sorted(REFERENCE_NORMALIZE))
def test_lp_deepssl_recipe_sets_the_reference_table(dataset, method):
  expected = REFERENCE_DATASETS[dataset]
  for labels in PAPER_TABLES[dataset]:
    arg = f'dataset={dataset},labels={labels},method={method}'
    config = semi_supervised.get_config(f'{arg},recipe=lp_deepssl')
    flat = _flat(config)
    assert (config.recipe, config.labels, config.method) == ('lp_deepssl', labels, method)
    assert config.encoder == expected['encoder']
    assert (config.heads.classifier, config.heads.consistency) == expected['heads']
    for field in ('batch_size', 'labeled_batch_size', 'eval_every_epochs'):
      assert config[field] == expected[field], field
    assert config.optim.lr == expected['lr'] and config.mt.ema_decay == expected['ema_decay']
    for field, value in expected['augment'].items():
      assert config.augment[field] == value, field
    for field, value in REFERENCE_COMMON.items():
      assert flat[field] == pytest.approx(value), field
    assert config.normalize_features is REFERENCE_NORMALIZE[method]
    # The reference's datasets take its recipe by default.
    assert semi_supervised.get_config(arg).to_dict() == config.to_dict()
    ssl_train.check_config(config)


def test_project_recipe_is_the_default_of_the_cpu_setups_and_lp_deepssl_overrides_it():
  for dataset in ('fashion_mnist', 'digits'):
    default = semi_supervised.get_config(f'dataset={dataset},method=dlp')
    assert default.recipe == 'project'
    assert (default.normalize_features, default.lp.features_from) == (False, 'clean')
    assert (default.stage2_optimizer, default.stage2_teacher) == ('fresh', 'continue')
    assert (default.mt.teacher_init, default.lp.clip_negative) == ('student', True)
    ref = semi_supervised.get_config(f'dataset={dataset},method=dlp,recipe=lp_deepssl')
    assert (ref.normalize_features, ref.lp.features_from) == (True, 'augmented')
    assert (ref.stage2_optimizer, ref.stage2_teacher) == ('continue', 'fresh')
    assert (ref.mt.teacher_init, ref.lp.clip_negative) == ('random', False)
  with pytest.raises(ValueError, match=r"recipe='rfs' is not one of \['lp_deepssl', 'project'\]"):
    semi_supervised.get_config('recipe=rfs')


@pytest.mark.parametrize(
    ('field', 'value', 'allowed'),
    [
        ('heads.classifier', 'cosine', "['linear', 'weight_norm', 'flax_dense']"),
        ('heads.consistency', 'dense', "['linear', 'weight_norm', 'flax_dense']"),
        ('lp.features_from', 'teacher', "['augmented', 'clean']"),
        ('mt.teacher_init', 'zeros', "['random', 'student']"),
        ('stage2_optimizer', 'adam', "['continue', 'fresh']"),
        ('stage2_teacher', 'copy', "['fresh', 'continue']"),
        ('augment.rotate_order', 3, '[0, 1]'),
    ],
)
def test_check_config_names_the_field_and_its_allowed_values(field, value, allowed):
  config = semi_supervised.get_config('smoke,recipe=lp_deepssl')
  config.update_from_flattened_dict({field: value})
  with pytest.raises(
      ValueError, match=re.escape(f'config.{field}={value!r} is not one of {allowed}.')
  ):
    ssl_train.check_config(config)


def test_check_config_ranges():
  config = semi_supervised.get_config('smoke')
  config.mt.ema_decay = 1.0
  with pytest.raises(ValueError, match=r'config.mt.ema_decay=1.0 must lie in \[0, 1\)'):
    ssl_train.check_config(config)
  config = semi_supervised.get_config('smoke')
  config.augment.rotate_degrees = -5.0
  with pytest.raises(
      ValueError, match=r'config.augment.rotate_degrees=-5.0 must lie in \[0, 180\]'
  ):
    ssl_train.check_config(config)


# ---------------------------------------------------------------- what each choice does


SHAPE = (8, 8, 1)
NUM_CLASSES = 3
IMAGES = np.random.default_rng(0).integers(0, 256, (6, *SHAPE), dtype=np.uint8)


def _config(method='mt_dlp', **overrides):
  """Fashion-MNIST's single channel, a tiny Conv-4, the LP-DeepSSL recipe."""
  config = semi_supervised.get_config(f'smoke,method={method},recipe=lp_deepssl')
  config.encoder_kwargs = dict(width=4, pool_blocks=2)
  config.update_from_flattened_dict(overrides)
  return config


def _init(model, key=jax.random.PRNGKey(0)):
  return classifier.init_variables(model, SHAPE, key)


def _model(width=4, **fields):
  encoder = build_encoder('conv4', width=width, pool_blocks=2)
  return classifier.Classifier(encoder, NUM_CLASSES, **fields)


def test_head_types_have_their_parameters_and_init_scale():
  fan_in = 256  # Conv-4 of width 256: the heads see 256 features.
  model = _model(width=fan_in, class_head='linear', consistency_head='weight_norm')
  params, _ = _init(model)
  linear, weight_norm = params['head'], params['consistency_head']
  assert set(linear) == {'kernel', 'bias'} and set(weight_norm) == {'v', 'g', 'bias'}
  bound = 1 / np.sqrt(fan_in)  # torch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  for values in (linear['kernel'], weight_norm['v']):  # 768 draws each.
    assert bound >= np.abs(values).max() > 0.9 * bound
  for values in (linear['bias'], weight_norm['bias']):  # Torch's bias init, not flax's zeros.
    assert bound >= np.abs(values).max() > 0
  # A uniform's standard deviation is bound / sqrt(3); 768 draws give it within ~5%.
  assert np.std(linear['kernel']) == pytest.approx(bound / np.sqrt(3), rel=0.1)
  # weight_norm starts at w = v: g is each output column's norm.
  np.testing.assert_allclose(weight_norm['g'], np.linalg.norm(weight_norm['v'], axis=0), rtol=1e-6)
  flax_dense, _ = _init(_model(width=fan_in, class_head='flax_dense'))
  np.testing.assert_array_equal(flax_dense['head']['bias'], 0.0)  # LeCun normal, zero bias.
  assert np.std(flax_dense['head']['kernel']) == pytest.approx(bound, rel=0.15)


@pytest.mark.parametrize('normalize', [True, False])
def test_normalize_features_gives_the_heads_unit_vectors(normalize):
  model = _model(class_head='linear', normalize_features=normalize)
  params, stats = _init(model)
  x = jnp.asarray(IMAGES, jnp.float32) / 255.0
  (logits, _), pooled = model.apply({'params': params, 'batch_stats': stats}, x, train=False)
  norms = np.linalg.norm(pooled, axis=-1)
  if normalize:
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
  else:
    assert np.abs(norms - 1.0).max() > 1e-2
  head = params['head']
  np.testing.assert_allclose(logits, pooled @ head['kernel'] + head['bias'], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('batch_size', [6, 4])
def test_features_from_augmented_embeds_augmented_images(batch_size):
  config = _config(**{'eval_batch_size': batch_size})
  state = classifier.create_state(config, NUM_CLASSES, SHAPE)
  fns = classifier.make_apply_fns(config)
  step = 7
  augmented = classifier.propagation_features(state, config, fns, IMAGES, step)
  spec = augment_spec_for('fashion_mnist', train=True, **config.augment)
  key = training.step_rng(config.seed, step, stream=classifier.FEATURE_AUGMENT_STREAM)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  expected = []
  for start in range(0, len(IMAGES), batch_size):
    views = augment_batch(jax.random.fold_in(key, start), IMAGES[start : start + batch_size], spec)
    expected.append(state.apply_fn(variables, views, train=False)[1])  # Eval mode.
  np.testing.assert_allclose(augmented, np.concatenate(expected), rtol=1e-5, atol=1e-6)
  config.lp.features_from = 'clean'
  clean = classifier.propagation_features(state, config, fns, IMAGES, step)
  np.testing.assert_allclose(clean, fns.student(state, IMAGES)[1], rtol=1e-6)
  assert np.abs(np.asarray(clean) - np.asarray(augmented)).max() > 1e-3


BATCH = (IMAGES, np.array([0, 1, 2, -1, -1, -1]), np.ones(6, np.float32))


def _step_fn(config, **kwargs):
  return jax.jit(
      functools.partial(
          ssl_train.train_step,
          augment_spec=augment_spec_for('fashion_mnist', train=True, **config.augment),
          mean_teacher=config.method in ('mt', 'mt_dlp'),
          logit_distance_cost=0.01,
          ema_decay=0.97,
          **kwargs,
      )
  )


def _stage_one(config, steps=2):
  """A state after `steps` Mean Teacher (or supervised) steps of stage 1."""
  state = classifier.create_state(config, NUM_CLASSES, SHAPE)
  step = _step_fn(config)
  for i in range(steps):
    state, _ = step(state, *BATCH, jnp.ones(NUM_CLASSES), 1.0, training.step_rng(0, i))
  return state


def _stage_two_tx(config):
  return training.make_optimizer(config.optim, 1, schedule=lambda count: 0.01 * count)[0]


@pytest.mark.parametrize('mode', ['continue', 'fresh'])
def test_stage2_optimizer_carries_or_resets_the_momentum(mode):
  config = _config(method='dlp', stage2_optimizer=mode)
  state = _stage_one(config)
  end_of_stage_one = optax.tree_utils.tree_get(state.opt_state, 'trace')
  assert max(float(jnp.abs(t).max()) for t in jax.tree.leaves(end_of_stage_one)) > 0
  model = classifier.build_model(config, NUM_CLASSES)
  started = begin_stage(config, state, _stage_two_tx(config), 1, model, SHAPE)
  trace = optax.tree_utils.tree_get(started.opt_state, 'trace')
  if mode == 'continue':
    jax.tree.map(np.testing.assert_array_equal, trace, end_of_stage_one)
  else:
    jax.tree.map(lambda t: np.testing.assert_array_equal(t, 0.0), trace)
  # Either way the schedule restarts at the stage's first step (the reference sets each
  # iteration's learning rate from the stage's own epoch).
  assert int(optax.tree_utils.tree_get(started.opt_state, 'count')) == 0
  # A supervised stage 1 has no teacher to restart; DLP's stage 2 keeps it untouched.
  jax.tree.map(np.testing.assert_array_equal, started.teacher_params, state.teacher_params)


def test_teacher_init_random_or_a_copy_of_the_student():
  random = classifier.create_state(_config(), NUM_CLASSES, SHAPE)
  expected, _ = _init(classifier.build_model(_config(), NUM_CLASSES), training.step_rng(0, 0, 1))
  jax.tree.map(np.testing.assert_array_equal, random.teacher_params, expected)
  kernels = lambda p: [
      v for path, v in jax.tree_util.tree_leaves_with_path(p) if 'kernel' in str(path)
  ]
  for teacher, student in zip(kernels(random.teacher_params), kernels(random.params)):
    assert not np.array_equal(teacher, student)
  copy = classifier.create_state(_config(**{'mt.teacher_init': 'student'}), NUM_CLASSES, SHAPE)
  jax.tree.map(np.testing.assert_array_equal, copy.teacher_params, copy.params)


@pytest.mark.parametrize('mode', ['fresh', 'continue'])
def test_stage2_teacher_restarts_as_the_reference_or_continues(mode):
  config = _config(stage2_teacher=mode)
  state = _stage_one(config, steps=2)
  model = classifier.build_model(config, NUM_CLASSES)
  started = begin_stage(config, state, _stage_two_tx(config), 1, model, SHAPE)
  if mode == 'continue':
    jax.tree.map(np.testing.assert_array_equal, started.teacher_params, state.teacher_params)
    return
  # A new model of its own, drawn from the seed and the stage's first step (2), with new
  # BatchNorm statistics.
  params, stats = _init(model, training.step_rng(config.seed, 2, stream=1))
  jax.tree.map(np.testing.assert_array_equal, started.teacher_params, params)
  jax.tree.map(np.testing.assert_array_equal, started.teacher_batch_stats, stats)
  # Its average restarts: the first stage-2 step weighs it and the student 1/2 each.
  after, _ = _step_fn(config, ema_step_offset=2)(
      started, *BATCH, jnp.ones(NUM_CLASSES), 1.0, training.step_rng(0, 2)
  )
  jax.tree.map(
      lambda t, new, s: np.testing.assert_allclose(t, 0.5 * new + 0.5 * s, rtol=1e-5, atol=1e-7),
      after.teacher_params,
      params,
      after.params,
  )
