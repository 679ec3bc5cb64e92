"""Datasets in their published formats, label splits, episodes, augmentation, prefetch.

Each name below is imported from its module on first use: a config reads the
augmentation defaults (`augment_spec_for`) without loading JAX and every reader.
"""

from groundwork.lazy_exports import lazy_exports

_EXPORTS = {
    'groundwork.data.augment': ('augment_batch', 'two_views'),
    'groundwork.data.augment_spec': ('NORMALIZATION', 'AugmentSpec', 'augment_spec_for'),
    'groundwork.data.cifar': (
        'CIFAR100_SUPERCLASSES',
        'CIFAR_FS_SPLITS',
        'FC100_SPLITS',
        'load_cifar10',
        'load_cifar100',
        'load_cifar_fewshot',
        'load_cifar_fs',
        'load_fc100',
    ),
    'groundwork.data.dataset': ('ImageDataset', 'concatenate'),
    'groundwork.data.digits': ('load_digits',),
    'groundwork.data.episodes': ('Episodes', 'episode_batches', 'make_episodes'),
    'groundwork.data.fashion_mnist': ('load_fashion_mnist', 'read_idx'),
    'groundwork.data.miniimagenet': ('load_miniimagenet',),
    'groundwork.data.omniglot': (
        'OMNIGLOT_FILES',
        'LakeRun',
        'lake_error_rate',
        'load_lake_runs',
        'load_omniglot',
        'omniglot_alphabet_of',
        'omniglot_file',
    ),
    'groundwork.data.prefetch': (
        'check_data_on_device',
        'gathered_batches',
        'keep_on_device',
        'prefetch_to_device',
    ),
    'groundwork.data.splits': (
        'balanced_labeled_indices',
        'read_reference_labels',
        'two_stream_batches',
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
