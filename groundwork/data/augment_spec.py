"""What augmentation each dataset trains with, and its normalisation.

Configs read these defaults to expose them as overridable fields, so this module
imports no JAX: loading a config (or reporting a typo in one) stays instant.
`groundwork.data.augment` applies an AugmentSpec on device.
"""

from __future__ import annotations

import dataclasses

# (mean, std) per channel, in units of the 0..1 intensity.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    'miniimagenet': (
        tuple(v / 255 for v in (120.40, 115.59, 104.54)),
        tuple(v / 255 for v in (70.68, 68.28, 72.55)),
    ),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # CIFAR-FS and FC100 split CIFAR-100's images: its statistics, RFS's values.
    'cifar_fs': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    'fc100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    # Measured with this package's loaders: Omniglot on images_background_small1+2
    # at 28x28 (strokes high), Fashion-MNIST on its training set, digits on all 1,797.
    'omniglot': ((0.0843,), (0.2393,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'digits': ((0.3053,), (0.3759,)),
}


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Which augmentations `augment_batch` applies; hashable, so jit can take it as static.

  Attributes:
    crop_padding: random crop with this zero padding (0 = off).
    translate: random translation by up to this many pixels, reflect fill (0 = off).
    flip: random horizontal flip.
    rotate_degrees: random rotation in ±rotate_degrees (0 = off), zero fill, applied
      before the crop, translation and flip.
    rotate_order: 1 bilinear, 0 nearest (torchvision's RandomRotation default).
    color_jitter: torchvision's ColorJitter(b, b, b) on PIL images with b = this value
      (0 = off; RGB images only), applied after the crop and translation, before the flip.
    mean, std: per-channel normalisation in 0..1 units.
  """

  crop_padding: int = 0
  translate: int = 0
  flip: bool = False
  rotate_degrees: float = 0.0
  rotate_order: int = 1
  color_jitter: float = 0.0
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)


# Training augmentation of each dataset, as in the papers this code reproduces:
# crop 8 for 84x84 and 4 for 32x32 few-shot images, ±4 reflect translation for
# semi-supervised CIFAR, no flip for Omniglot characters (mirrored characters
# are other characters) but ±10° rotation.
_DEFAULT_AUGMENTATION = {
    'miniimagenet': dict(crop_padding=8, flip=True),
    'cifar_fs': dict(crop_padding=4, flip=True),
    'fc100': dict(crop_padding=4, flip=True),
    'cifar10': dict(translate=4, flip=True),
    'cifar100': dict(translate=4, flip=True),
    'omniglot': dict(rotate_degrees=10.0),
    'fashion_mnist': dict(),
    'digits': dict(),
}


def augment_spec_for(dataset: str, train: bool = True, **overrides) -> AugmentSpec:
  """The default AugmentSpec of `dataset` with its normalisation, fields overridable.

  With train=False only the normalisation is kept (the evaluation transform).
  """
  if dataset not in _DEFAULT_AUGMENTATION:
    raise ValueError(
        f'No augmentation defaults for dataset {dataset!r}; known: '
        f'{sorted(_DEFAULT_AUGMENTATION)}.'
    )
  mean, std = NORMALIZATION[dataset]
  fields = dict(_DEFAULT_AUGMENTATION[dataset] if train else {}, mean=mean, std=std)
  fields.update(overrides)
  return AugmentSpec(**fields)
