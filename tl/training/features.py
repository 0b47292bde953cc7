"""Feature caching for a frozen backbone: its output is computed once per image, and the head trains on it.

The rule: each image is cached in its validation view (resize and centre crop), so the head trains
without augmentation; a frozen backbone in eval mode gives the same features every epoch, and the
tutorial's 25 epochs cost one pass through the backbone instead of 25.

The features are also kept on disk (`strategy.cache_dir`), keyed on everything they depend on: the
backbone's architecture and weights, the transforms, the images, the precision and the device type.
A sweep over lr or the optimizer reuses them; any change to those makes a new entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from tl.core import metrics
from tl.core.critical_sections import one_at_a_time
from tl.core.metrics import Predictions
from tl.core.provenance import state_dict_sha256
from tl.models.backbones import TransferModel
from tl.training.checkpoints import atomic_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when what is stored, or how images are read, changes
PRECISION_NAMES = {"32": "fp32", "bf16": "bf16", "16-mixed": "fp16"}


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


def extract_batch_size(device: torch.device, image_pixels: int) -> int:
    """Inference only, so the fastest batch size, not training's. On a CPU, the batch whose activations
    still fit the caches: larger ones are slower per image, so 8 images at 224 px and as many more as
    fit at a smaller size (32 at 112 px); measured by benchmarks/overhead.py's feature phase. A GPU
    wants them large."""
    if device.type != "cpu":
        return 64
    return max(1, min(64, round(8 * 224 * 224 / image_pixels)))


@torch.no_grad()
def extract(
    model: TransferModel,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
    loader_options: dict[str, Any] | None = None,
    progress: str | None = None,
) -> TensorDataset:
    """Every image's features (in the dataset's order) and its label. With `progress` (a label), a
    progress bar on a terminal: on a large folder this pass takes minutes."""
    model.network.to(device, memory_format=memory_format).eval()
    features, labels = [], []
    batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, **(loader_options or {}))
    if progress:
        batches = tqdm(batches, desc=progress, unit="batch", leave=False, disable=None)  # None: only on a terminal
    with without_head(model) as backbone:
        for images, batch_labels in batches:
            with autocast():
                features.append(backbone(images.to(device, memory_format=memory_format)).float().cpu())
            labels.append(batch_labels)
    return TensorDataset(torch.cat(features), torch.cat(labels))


@dataclass(frozen=True)
class FeaturePass:
    """How the frozen backbone runs over the images: the trainer's device, inference precision (and its
    autocast) and memory format; whether a progress bar is shown; whether the training runs over several
    processes (then each trains on the images: a per-process cache would gain nothing)."""

    device: torch.device
    precision: str
    autocast: Callable[[], contextlib.AbstractContextManager]
    memory_format: torch.memory_format
    progress: bool
    distributed: bool = False


def head_only(model: TransferModel) -> TransferModel:
    """The head as a model of its own, for the trainer: training it trains `model`'s head (the same module)."""
    return TransferModel(model.head, model.head, [], model.preprocess, model.weights, model.weights_sha256)


def fit_probe(
    head: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    weight_decay: float,
    steps: int,
) -> Predictions:
    """Fit `head` on cached (features, labels): a multinomial logistic regression, as scikit-learn's, by
    full-batch L-BFGS on the cross-entropy plus `weight_decay / 2` times its weights' squared norm, for at
    most `steps` iterations. Deterministic, and without a learning rate or epochs to choose. The head's
    predictions on the `val` features."""
    features, labels = train[0].float(), train[1]
    head.float().eval().requires_grad_(True)  # eval: no dropout in a head that has some
    weights = [parameter for parameter in head.parameters() if parameter.dim() > 1]  # biases are not penalised
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = sum(weight.pow(2).sum() for weight in weights)
        loss = F.cross_entropy(head(features), labels) + weight_decay / 2 * penalty
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = head(val[0].float())
    predictions = Predictions(logits, val[1])
    log.info("linear probe on the cached features: val acc %.4f", metrics.val_acc(predictions))
    return predictions


def cache_key(
    model: TransferModel, train_views: Dataset, val_set: Dataset, images_sha256: str, run: FeaturePass
) -> str:
    """What the features depend on, as one digest: a change to any part gives another key."""
    with without_head(model) as backbone:
        parts = {
            "format": CACHE_FORMAT,
            "architecture": repr(backbone),
            "weights": state_dict_sha256(backbone.state_dict()),
            "train_transform": repr(getattr(train_views, "transform", None)),
            "val_transform": repr(getattr(val_set, "transform", None)),
            "images": images_sha256,
            # Which images are in which split, in order: cross-validation folds share the images' digest.
            "splits": _samples_sha256(train_views, val_set),
            "precision": run.precision,
            "memory_format": str(run.memory_format),
            "device": run.device.type,
            "torch": torch.__version__,
        }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _samples_sha256(*datasets: Dataset) -> str | None:
    """A digest of each dataset's (path, label) list, for datasets that list their samples (ImageFolder)."""
    if not all(hasattr(dataset, "samples") for dataset in datasets):
        return None
    listed = "\n".join(f"{path}\t{label}" for dataset in datasets for path, label in [*dataset.samples, ("", -1)])
    return hashlib.sha256(listed.encode()).hexdigest()


def cached_loaders(
    model: TransferModel,
    train_views: Dataset,
    val_set: Dataset,
    train_loader: DataLoader,
    val_loader: DataLoader,
    run: FeaturePass,
    cache_dir: str | Path | None = None,
    images_sha256: str | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Loaders of features with the image loaders' batch size, shuffle generator and last-batch rule.

    With `cache_dir` (and the images' digest), features found there are loaded instead of computed,
    and computed ones are saved there."""
    path = None
    if cache_dir is not None and images_sha256 is not None:
        key = cache_key(model, train_views, val_set, images_sha256, run)
        path = Path(cache_dir).expanduser() / f"{key}.pt"
    stored, computed = _load(path), False
    if stored is None:
        # Parallel sweep jobs that need the same features: the first computes them, the others wait and
        # load them (two computing at once on the same cores would each take twice as long).
        with one_at_a_time(path.with_suffix(".lock") if path is not None else None):
            stored = _load(path)  # computed by another job while this one waited
            if stored is None:
                # With torch's random state put back after: loading the features draws nothing from it, so a
                # run that computes them trains exactly as one that finds them cached (a rerun, a resume).
                with torch.random.fork_rng(devices=[]):
                    stored, computed = _compute(model, train_views, val_set, train_loader, run), True
                if path is not None:
                    atomic_save(stored, path)
    train, val = TensorDataset(*stored["train"]), TensorDataset(*stored["val"])
    if not computed:
        log.info("loaded %d train and %d val feature vectors from %s", len(train), len(val), path)
    return (
        DataLoader(train, batch_size=train_loader.batch_size, shuffle=True, generator=train_loader.generator,
                   drop_last=train_loader.drop_last),
        DataLoader(val, batch_size=val_loader.batch_size, shuffle=False),
    )  # fmt: skip


def _compute(
    model: TransferModel, train_views: Dataset, val_set: Dataset, train_loader: DataLoader, run: FeaturePass
) -> dict[str, list[torch.Tensor]]:
    """The backbone's features (and labels) of both splits, in one pass."""
    options = {"num_workers": train_loader.num_workers, "pin_memory": train_loader.pin_memory}
    if train_loader.num_workers > 0:
        options["multiprocessing_context"] = train_loader.multiprocessing_context
    batch_size = extract_batch_size(run.device, train_views[0][0][0].numel())
    log.info(
        "computing the backbone's features of %d train and %d val images (%s, batch %d)",
        len(train_views), len(val_set), PRECISION_NAMES[run.precision], batch_size,
    )  # fmt: skip
    # One pass over both splits: one set of loader workers and one warm-up, not two.
    both = extract(model, ConcatDataset([train_views, val_set]), batch_size, loader_options=options,
                   progress="features" if run.progress else None, device=run.device, autocast=run.autocast,
                   memory_format=run.memory_format)  # fmt: skip
    split = len(train_views)
    log.info("cached %d train and %d val feature vectors of size %d", split, len(val_set), both.tensors[0].shape[1])
    return {"train": [t[:split] for t in both.tensors], "val": [t[split:] for t in both.tensors]}


def _load(path: Path | None) -> dict[str, list[torch.Tensor]] | None:
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged entry is recomputed (and replaced), never trusted
        log.warning("feature cache %s is unreadable (%s); computing the features again", path, error)
        return None
