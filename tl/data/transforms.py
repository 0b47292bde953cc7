"""The transforms of a model's images, from the `Preprocess` its weights expect: sizes, interpolation and
normalisation are never typed twice. Training, validation, the feature cache and prediction all use these."""

from __future__ import annotations

from torchvision.transforms import v2

from tl.models.backbones import Preprocess

# The evaluation transform is part of the logged model (it travels with it), so it lives there.
from tl.models.pyfunc_model import eval_transform, to_normalised_tensor

__all__ = ["batch_mixing", "eval_transform", "train_transform"]


def train_transform(preprocess: Preprocess, crop_scale: tuple[float, float]) -> v2.Compose:
    """The tutorial's augmentation: a random resized crop (of `crop_scale` of the area) and a horizontal flip."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    return v2.Compose(
        [
            v2.RandomResizedCrop(preprocess.input_size, scale=crop_scale, interpolation=interpolation),
            v2.RandomHorizontalFlip(),
            *to_normalised_tensor(preprocess),
        ]
    )


def batch_mixing(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """MixUp and CutMix of training batches (torchvision's): images blended, or a patch of one pasted into
    another, in a proportion drawn from Beta(alpha, alpha), and their labels mixed in that proportion (soft
    targets, which the cross-entropy takes as they are). With both alphas above 0, each batch gets one of the
    two, as timm does. None when both are 0."""
    mixes = [mix(alpha=alpha, num_classes=num_classes)
             for mix, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha > 0]  # fmt: skip
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
