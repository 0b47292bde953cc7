"""Transfer-learning strategies: which parameters train, in which groups, and when that changes.

Each `strategy` config option points at one class here. The trainer calls
`param_groups` once (the optimizer receives only what it returns) and `start_epoch` before
every training epoch, which sets `requires_grad` and the train/eval mode of each module.
Frozen modules stay in eval mode, so their BatchNorm running statistics do not drift.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tl.errors import TLError
from tl.models import TransferModel

ParamGroups = list[dict[str, Any]]


def _train_only(model: TransferModel, trainable: list[nn.Module]) -> None:
    """Put `trainable` in train mode with gradients; freeze everything else in eval mode."""
    model.network.eval()
    model.network.requires_grad_(False)
    for module in trainable:
        module.train()
        module.requires_grad_(True)


class Finetune:
    """Fine-tune every weight (the tutorial's first scenario)."""

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        return [{"params": list(model.network.parameters()), "lr": lr, "name": "all"}]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        _train_only(model, [model.network])


class Frozen:
    """Fixed feature extractor: only the new head trains (the tutorial's second scenario).

    With `cache_features`, the backbone's features are computed once and the head trains on them
    (tl/features.py): the same head in a fraction of the time, trained without augmentation. With
    `cache_dir`, they are kept there for the next run on the same backbone, transforms and images.
    """

    def __init__(self, cache_features: bool = True, cache_dir: str | None = None) -> None:
        self.cache_features = cache_features
        self.cache_dir = cache_dir

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        return [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        _train_only(model, [model.head])


class Partial:
    """Train the last `n` blocks of the backbone and the head; freeze the rest."""

    def __init__(self, n: int = 1) -> None:
        self.n = n

    def _trainable(self, model: TransferModel) -> list[nn.Module]:
        if not 1 <= self.n <= len(model.blocks):
            raise TLError(
                f"strategy.n={self.n} is out of range: this backbone has {len(model.blocks)} blocks, "
                f"choose 1..{len(model.blocks)}"
            )
        return [*model.blocks[-self.n :], model.head]

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        params = [p for module in self._trainable(model) for p in module.parameters()]
        return [{"params": params, "lr": lr, "name": f"last_{self.n}_blocks+head"}]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        _train_only(model, self._trainable(model))


class Gradual:
    """fastai-style: the head alone for `freeze_epochs`, then everything, the backbone at a lower lr."""

    def __init__(self, freeze_epochs: int = 1, backbone_lr_mult: float = 0.1) -> None:
        self.freeze_epochs = freeze_epochs
        self.backbone_lr_mult = backbone_lr_mult

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        # The backbone group is in the optimizer from the start, but its parameters get no
        # gradient while frozen, and torch optimizers skip parameters whose grad is None.
        return [
            {"params": model.backbone_parameters(), "lr": lr * self.backbone_lr_mult, "name": "backbone"},
            {"params": list(model.head.parameters()), "lr": lr, "name": "head"},
        ]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        _train_only(model, [model.head] if epoch < self.freeze_epochs else [model.network])
