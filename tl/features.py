"""Feature caching for a frozen backbone: its output is computed once per image, and the head trains on it.

The rule: each image is cached in its validation view (resize and centre crop), so the head trains
without augmentation; a frozen backbone in eval mode gives the same features every epoch, and the
tutorial's 25 epochs cost one pass through the backbone instead of 25.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tl.models import TransferModel

log = logging.getLogger(__name__)


@contextlib.contextmanager
def without_head(model: TransferModel) -> Iterator[nn.Module]:
    """The network with its head swapped for Identity: its output is the features the head reads."""
    parent, name = _parent_of(model.network, model.head)
    setattr(parent, name, nn.Identity())
    try:
        yield model.network
    finally:
        setattr(parent, name, model.head)


def _parent_of(network: nn.Module, head: nn.Module) -> tuple[nn.Module, str]:
    for module in network.modules():
        for name, child in module.named_children():
            if child is head:
                return module, name
    raise ValueError("the head is not a submodule of the network")


@torch.no_grad()
def extract(model: TransferModel, dataset: Dataset, batch_size: int, device: torch.device) -> TensorDataset:
    """Every image's features (in the dataset's order) and its label."""
    model.network.to(device).eval()
    features, labels = [], []
    with without_head(model) as backbone:
        for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            features.append(backbone(images.to(device)).float().cpu())
            labels.append(batch_labels)
    return TensorDataset(torch.cat(features), torch.cat(labels))


def head_only(model: TransferModel) -> TransferModel:
    """The head as a model of its own, for the trainer: training it trains `model`'s head (the same module)."""
    return TransferModel(model.head, model.head, [], model.preprocess, model.weights, model.weights_sha256)


def cached_loaders(
    model: TransferModel,
    train_views: Dataset,
    val_set: Dataset,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device: torch.device,
) -> tuple[DataLoader, DataLoader]:
    """Loaders of features with the image loaders' batch size, shuffle generator and last-batch rule."""
    train = extract(model, train_views, train_loader.batch_size, device)
    val = extract(model, val_set, val_loader.batch_size, device)
    log.info("cached %d train and %d val feature vectors of size %d", len(train), len(val), train.tensors[0].shape[1])
    return (
        DataLoader(train, batch_size=train_loader.batch_size, shuffle=True, generator=train_loader.generator,
                   drop_last=train_loader.drop_last),
        DataLoader(val, batch_size=val_loader.batch_size, shuffle=False),
    )  # fmt: skip
