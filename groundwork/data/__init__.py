"""Datasets in their published formats, label splits, episodes, augmentation, prefetch."""
from groundwork.data import augment
from groundwork.data.augment import (NORMALIZATION, AugmentSpec, augment_batch, augment_spec_for,
                                     two_views)
from groundwork.data.cifar import (CIFAR100_SUPERCLASSES, CIFAR_FS_SPLITS, FC100_SPLITS,
                                   load_cifar10, load_cifar100, load_cifar_fs, load_fc100)
from groundwork.data.dataset import ImageDataset, concatenate
from groundwork.data.digits import load_digits
from groundwork.data.episodes import Episodes, episode_batches, make_episodes
from groundwork.data.fashion_mnist import load_fashion_mnist, read_idx
from groundwork.data.miniimagenet import load_miniimagenet
from groundwork.data.omniglot import (OMNIGLOT_FILES, LakeRun, lake_error_rate, load_lake_runs,
                                      load_omniglot, omniglot_alphabet_of, omniglot_file)
from groundwork.data.prefetch import prefetch_to_device
from groundwork.data.splits import (balanced_labeled_indices, read_reference_labels,
                                    two_stream_batches)
