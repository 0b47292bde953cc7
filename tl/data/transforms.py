"""The transforms of a model's images, from the `Preprocess` its weights expect: sizes, interpolation and
normalisation are never typed twice. Training, validation, the feature cache and prediction all use these."""

from __future__ import annotations

from torchvision.transforms import v2

from tl.models.backbones import Preprocess

# The evaluation transform is part of the logged model (it travels with it), so it lives there.
from tl.models.pyfunc_model import eval_transform, to_normalised_tensor

__all__ = ["eval_transform", "train_transform"]


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
