"""Few-shot learning: dense classification and implanting (Lifchitz et al., CVPR 2019).

Public API of the algorithm modules; the trainer is `fsl.train`.
"""

from fsl.cosine_classifier import CosineClassifier, l2_normalize
from fsl.dense_loss import dense_loss, gap_loss
from fsl.episodic_evaluation import (
    embed_in_batches,
    episode_accuracies,
    lake_oneshot_error,
    print_progress,
    run_episode_batches,
    summarize,
)
from fsl.implanting import (
    IMPLANTABLE_LAYERS,
    ImplantConfig,
    ImplantedEncoder,
    implant_episode,
    implant_episode_accuracies,
    implanted_encoder,
    init_implants,
    merge_implants,
    split_implants,
    train_implants,
    wide_control_encoder,
)
from fsl.prototypes import classify_by_prototypes, dense_scores, imprint_prototypes

__all__ = [
    'CosineClassifier',
    'l2_normalize',
    'dense_loss',
    'gap_loss',
    'embed_in_batches',
    'episode_accuracies',
    'lake_oneshot_error',
    'print_progress',
    'run_episode_batches',
    'summarize',
    'IMPLANTABLE_LAYERS',
    'ImplantConfig',
    'ImplantedEncoder',
    'implant_episode',
    'implant_episode_accuracies',
    'implanted_encoder',
    'init_implants',
    'merge_implants',
    'split_implants',
    'train_implants',
    'wide_control_encoder',
    'classify_by_prototypes',
    'dense_scores',
    'imprint_prototypes',
]
