"""Transfer-learning strategies: which parameters train, in which groups, when that changes, and on what data.

Each `strategy` config option (conf/strategy/NAME.yaml) points at one `Strategy` subclass here; a
new strategy is one class and one YAML file. run.py calls `param_groups` once (the optimizer
receives only what it returns) and `fit_inputs` once; the trainer calls `start_epoch` before
every training epoch, which sets `requires_grad` and the train/eval mode of each module.
Frozen modules stay in eval mode, so their BatchNorm running statistics do not drift.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.data import DataLoader

from tl.core.errors import TLError
from tl.core.metrics import Predictions
from tl.models.backbones import TransferModel

if TYPE_CHECKING:
    from tl.data.folders import ImageFolderData
    from tl.training.features import FeaturePass

ParamGroups = list[dict[str, Any]]


class Strategy(ABC):
    """What a strategy provides: `param_groups` and `start_epoch` (required), `fit_inputs` (optional).

    A subclass's constructor arguments are its YAML keys (conf/strategy/NAME.yaml, `_target_` this class).
    """

    @abstractmethod
    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        """The optimizer's parameter groups, each a dict with `params`, `lr` and a `name` (logged as lr_NAME).
        Parameters left out are never updated. Called once, before training."""

    @abstractmethod
    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        """Before epoch `epoch` (0-based): set which modules train (`requires_grad`, train/eval mode)."""

    def fit_inputs(
        self,
        model: TransferModel,
        data: ImageFolderData,
        train_loader: DataLoader,
        val_loader: DataLoader,
        feature_pass: FeaturePass,
    ) -> tuple[TransferModel, DataLoader, DataLoader]:
        """What the epoch loop trains and validates on: by default the model and the image loaders.
        A strategy may replace them (`Frozen` trains its head on cached features, computed as `feature_pass`
        says)."""
        return model, train_loader, val_loader

    def validated_start(self) -> Predictions | None:
        """The model's validation predictions as `fit_inputs` handed it over, when the strategy has trained it
        already (a linear probe): the fit's epoch 0, whose weights are kept if no epoch beats them."""
        return None


def _backbone_and_head(model: TransferModel, lr: float, backbone_lr_mult: float) -> ParamGroups:
    """Two parameter groups: the backbone at `lr * backbone_lr_mult`, the head at `lr`."""
    return [
        {"params": model.backbone_parameters(), "lr": lr * backbone_lr_mult, "name": "backbone"},
        {"params": list(model.head.parameters()), "lr": lr, "name": "head"},
    ]


def _cached_features(
    model: TransferModel,
    data: ImageFolderData,
    train_loader: DataLoader,
    val_loader: DataLoader,
    feature_pass: FeaturePass,
    cache_dir: str | None,
) -> tuple[DataLoader, DataLoader]:
    """Loaders of the frozen backbone's features of the training views and the validation images,
    computed as `feature_pass` says or loaded from `cache_dir` (tl/training/features.py)."""
    from tl.training import features  # here: only the strategies that cache features need it

    return features.cached_loaders(
        model, data.train_views(model.preprocess), val_loader.dataset, train_loader, val_loader, feature_pass,
        cache_dir, data.fingerprint().sha256,
    )  # fmt: skip


def _train_only(model: TransferModel, trainable: list[nn.Module]) -> None:
    """Put `trainable` in train mode with gradients; freeze everything else in eval mode."""
    model.network.eval()
    model.network.requires_grad_(False)
    for module in trainable:
        module.train()
        module.requires_grad_(True)


def _batchnorm_in_eval_mode(network: nn.Module) -> None:
    """BatchNorm layers normalise with their running (pretrained) statistics and stop updating them; their
    scale and shift still train. The probe was fitted on features made with those statistics, and a batch
    of a few dozen images estimates them poorly."""
    for module in network.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
            module.eval()


class Finetune(Strategy):
    """Fine-tune every weight (the tutorial's first scenario)."""

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        """All of the network's parameters, one group."""
        return [{"params": list(model.network.parameters()), "lr": lr, "name": "all"}]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        """Every module trains."""
        _train_only(model, [model.network])


@dataclass
class Frozen(Strategy):
    """Fixed feature extractor: only the new head trains (the tutorial's second scenario).

    With `cache_features`, the backbone's features are computed once and the head trains on them
    (tl/training/features.py): the same head in a fraction of the time, trained without augmentation. With
    `cache_dir`, they are kept there for the next run on the same backbone, transforms and images.
    """

    cache_features: bool = True
    cache_dir: str | None = None

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        """The head's parameters only."""
        return [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        """The head trains; the backbone stays frozen, in eval mode."""
        _train_only(model, [model.head])

    def fit_inputs(
        self,
        model: TransferModel,
        data: ImageFolderData,
        train_loader: DataLoader,
        val_loader: DataLoader,
        feature_pass: FeaturePass,
    ) -> tuple[TransferModel, DataLoader, DataLoader]:
        """With `cache_features`: the head alone, on loaders of the backbone's features. Under torchrun
        every process trains on the images instead (the cache is per process and would gain nothing)."""
        if not self.cache_features or feature_pass.distributed:
            return model, train_loader, val_loader
        from tl.training import features

        loaders = _cached_features(model, data, train_loader, val_loader, feature_pass, self.cache_dir)
        return features.head_only(model), *loaders


@dataclass
class Partial(Strategy):
    """Train the last `n` blocks of the backbone and the head; freeze the rest."""

    n: int = 1

    def _trainable(self, model: TransferModel) -> list[nn.Module]:
        if not 1 <= self.n <= len(model.blocks):
            raise TLError(
                f"strategy.n={self.n} is out of range: this backbone has {len(model.blocks)} blocks, "
                f"choose 1..{len(model.blocks)}"
            )
        return [*model.blocks[-self.n :], model.head]

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        """The last `n` blocks' and the head's parameters, one group."""
        params = [p for module in self._trainable(model) for p in module.parameters()]
        return [{"params": params, "lr": lr, "name": f"last_{self.n}_blocks+head"}]

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        """The last `n` blocks and the head train."""
        _train_only(model, self._trainable(model))


@dataclass
class Gradual(Strategy):
    """fastai-style: the head alone for `freeze_epochs`, then everything, the backbone at a lower lr."""

    freeze_epochs: int = 1
    backbone_lr_mult: float = 0.1

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        """Two groups: the backbone at `lr * backbone_lr_mult`, the head at `lr`."""
        # The backbone group is in the optimizer from the start, but its parameters get no
        # gradient while frozen, and torch optimizers skip parameters whose grad is None.
        return _backbone_and_head(model, lr, self.backbone_lr_mult)

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        """The head alone for the first `freeze_epochs` epochs, then the whole network."""
        _train_only(model, [model.head] if epoch < self.freeze_epochs else [model.network])


@dataclass
class ProbeThenFinetune(Strategy):
    """Linear probing, then fine-tuning (LP-FT, Kumar et al., ICLR 2022): the head is first fitted on the
    frozen backbone's cached features (a logistic regression, seconds), then every weight trains from it,
    the backbone at `lr * backbone_lr_mult`. Fine-tuning from a head that already fits does not distort
    the pretrained features with a random head's large gradients. The probe is the fit's epoch 0: its
    weights are kept when no fine-tuning epoch beats them (data close to ImageNet, where the tutorial's
    frozen scenario wins)."""

    probe_weight_decay: float = 1e-3
    probe_steps: int = 100
    backbone_lr_mult: float = 1.0
    batchnorm_frozen: bool = False  # as before the option existed: a recorded lpft run reruns alike; the YAML says true
    cache_dir: str | None = None
    probe: Predictions | None = field(default=None, init=False, repr=False)

    def param_groups(self, model: TransferModel, lr: float) -> ParamGroups:
        """Two groups: the backbone at `lr * backbone_lr_mult`, the head at `lr`."""
        return _backbone_and_head(model, lr, self.backbone_lr_mult)

    def start_epoch(self, model: TransferModel, epoch: int) -> None:
        """Every module trains; with `batchnorm_frozen`, BatchNorm layers keep the pretrained statistics."""
        _train_only(model, [model.network])
        if self.batchnorm_frozen:
            _batchnorm_in_eval_mode(model.network)

    def fit_inputs(
        self,
        model: TransferModel,
        data: ImageFolderData,
        train_loader: DataLoader,
        val_loader: DataLoader,
        feature_pass: FeaturePass,
    ) -> tuple[TransferModel, DataLoader, DataLoader]:
        """The probe, on features computed (or loaded from `cache_dir`) as `feature_pass` says; then the
        whole model, on the image loaders."""
        from tl.training import features

        train_features, val_features = _cached_features(
            model, data, train_loader, val_loader, feature_pass, self.cache_dir
        )
        self.probe = features.fit_probe(
            model.head, train_features.dataset.tensors, val_features.dataset.tensors,
            self.probe_weight_decay, self.probe_steps,
        )  # fmt: skip
        return model, train_loader, val_loader

    def validated_start(self) -> Predictions | None:
        """The probe's predictions on the validation features."""
        return self.probe
