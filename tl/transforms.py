"""The transforms of a model's images, from the `Preprocess` its weights expect: sizes, interpolation and
normalisation are never typed twice. Training, validation, the feature cache and prediction all use these."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from tl.models import Preprocess


def train_transform(preprocess: Preprocess, crop_scale: tuple[float, float]) -> v2.Compose:
    """The tutorial's augmentation: a random resized crop (of `crop_scale` of the area) and a horizontal flip."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    return v2.Compose(
        [
            v2.RandomResizedCrop(preprocess.input_size, scale=crop_scale, interpolation=interpolation),
            v2.RandomHorizontalFlip(),
            *_to_normalised_tensor(preprocess),
        ]
    )


def eval_transform(preprocess: Preprocess) -> v2.Compose:
    """Resize and centre crop as the weights expect: for validation and for prediction."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    return v2.Compose(
        [
            v2.Resize(preprocess.resize_size, interpolation=interpolation),
            v2.CenterCrop(preprocess.input_size),
            *_to_normalised_tensor(preprocess),
        ]
    )


def _to_normalised_tensor(preprocess: Preprocess) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess.mean, preprocess.std)]
