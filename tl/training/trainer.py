"""The epoch loop: train, validate, keep the best-validation weights, restore them at the end."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from tl.core import metrics
from tl.core.distributed import Processes
from tl.core.errors import TLError
from tl.core.metrics import Predictions
from tl.core.numerics import autocast_for, numerics, resolve_device, resolve_precision
from tl.core.provenance import environment
from tl.data.transforms import batch_mixing
from tl.models.backbones import TransferModel
from tl.models.pyfunc_model import class_probabilities
from tl.training.averaging import WeightAverage
from tl.training.checkpoints import Checkpoint, TrainingState, restore_rng_states, rng_states
from tl.training.features import FeaturePass
from tl.training.schedulers import Schedule
from tl.training.stopping import EpochJudge, Stopping
from tl.training.strategies import Strategy

log = logging.getLogger(__name__)


def balanced_class_weights(dataset: Dataset) -> torch.Tensor:
    """Each class's loss weight, `images / (classes * the class's images)`: every class then counts as much
    in the loss as if the classes were equal (scikit-learn's "balanced" rule). `dataset`: an ImageFolder
    (its `targets`) or a TensorDataset of features and labels."""
    labels = torch.as_tensor(dataset.targets if hasattr(dataset, "targets") else dataset.tensors[1])
    counts = torch.bincount(labels).float()
    return (len(labels) / (len(counts) * counts.clamp(min=1))).float()


def _classes(model: TransferModel) -> int:
    """How many classes the model's head scores (a linear layer, as tl's models build it)."""
    if not isinstance(model.head, nn.Linear):
        raise TLError("trainer.mixup_alpha and trainer.cutmix_alpha need a model whose head is one linear layer")
    return model.head.out_features


class MetricsLogger(Protocol):
    """Where each epoch's metrics go (the MLflow tracker; a list in the tests)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record one epoch's metrics; `step` is the epoch's number, from 1."""


@dataclass
class FitResult:
    """What a fit leaves: each epoch's metrics, and which epoch was best by the monitored metric."""

    monitor: str
    best_epoch: int = 0  # 1-based; 0 before the first epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_predictions: Predictions | None = None  # on the validation set, by the restored weights
    tta: bool = False  # validated with test-time augmentation (and served with it)
    stopped: str | None = None  # why the fit stopped before its last epoch (tl/training/stopping.py), if it did
    stopping: dict[str, float] = field(default_factory=dict)  # the epochs done and the budget's seconds
    # Epoch 0: the validation metrics of the model as the strategy handed it over, when it had trained it
    # already (a linear probe: Strategy.validated_start); best_epoch 0 then means those weights were kept.
    start: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, float]:
        """The best epoch's metrics."""
        return self.history[self.best_epoch - 1] if self.best_epoch else self.start

    @property
    def best_value(self) -> float:
        """The monitored metric at the best epoch: what a sweep compares and Optuna optimises."""
        return self.best[self.monitor]


class Trainer:
    """The epoch loop and where it runs: device, precision, memory format, determinism, which epoch is best."""

    def __init__(
        self,
        epochs: int,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        deterministic: bool = True,
        progress: bool = True,
        monitor: str = "val_acc",
        mode: str = "auto",
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
        tta: bool = False,
        class_weights: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        patience: int | None = None,
        min_delta: float = 0.0,
        budget: str | float | None = None,
        started: float | None = None,
        processes: Processes | None = None,
        judge: EpochJudge | None = None,
    ) -> None:
        self.epochs = epochs
        # When to stop before `epochs`: see tl/training/stopping.py. `started`: when the budget's clock began;
        # `judge`: asked after every epoch (a search's pruner).
        started = time.monotonic() if started is None else started
        self.stopping = Stopping(patience, min_delta, budget, started=started, judge=judge)
        self.processes = processes or Processes()  # several under torchrun
        self.deterministic = deterministic
        self.monitor, self.direction = monitor, metrics.direction(monitor, mode)
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None and self.processes.distributed:
            self.device = torch.device("cuda", self.processes.local_rank)  # one GPU per process
        self.precision = resolve_precision(precision, self.device)
        self.autocast = autocast_for(self.device, self.precision)
        # For passes without gradients whose output is kept: the frozen backbone's features.
        self.inference_precision = resolve_precision(precision, self.device, gradients=False)
        self.inference_autocast = autocast_for(self.device, self.inference_precision)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "16-mixed")
        # NHWC memory layout: faster convolutions on CPUs and GPUs (benchmarks/compare.py, the tl-fp32 arms).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.progress = progress
        if not 0.0 <= label_smoothing < 1.0:
            raise TLError(f"trainer.label_smoothing={label_smoothing} is not allowed: a number from 0 up to 1")
        # Label smoothing: the target puts 1 - label_smoothing on the true class and spreads the rest evenly.
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.class_weights = class_weights  # weigh each class's loss by the inverse of its share of the images
        for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not alpha >= 0:
                raise TLError(f"trainer.{key}={alpha} is not allowed: 0 (off) or a number > 0, e.g. 0.2")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.mixing: Callable | None = None  # MixUp/CutMix of image batches, set up by `fit` (it needs the classes)
        self.tta = tta  # validate (and serve) each image with its mirror image too
        self.tta_applied = False  # whether the last validation did (not on cached feature vectors)
        self.average = WeightAverage(ema_decay)  # an EMA of the weights, validated and kept instead, if any
        self._seconds_per_image: float | None = None  # training speed, for the budget's estimates
        self._validation_seconds: float | None = None

    @property
    def pin_memory(self) -> bool:
        """Whether loaders should pin their batches: on a GPU, copies from pinned memory run asynchronously."""
        return self.device.type == "cuda"

    def feature_pass(self) -> FeaturePass:
        """How a frozen backbone's features are computed in this training (tl/training/features.py)."""
        return FeaturePass(self.device, self.inference_precision, self.inference_autocast, self.memory_format,
                           self.progress and self.processes.is_main, self.processes.distributed)  # fmt: skip

    def environment(self) -> dict[str, str]:
        """Where and how this trainer computes, for the run's provenance tags."""
        return environment(self.device, self.precision, self.processes.world_size, self.inference_precision)

    def fit(
        self,
        model: TransferModel,
        strategy: Strategy,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        train_loader: DataLoader,
        val_loader: DataLoader,
        metrics_logger: MetricsLogger,
        checkpoint: Checkpoint | None = None,
    ) -> FitResult:
        """Train for `self.epochs`, log each epoch, and leave the best epoch's weights in `model`.

        With `checkpoint`, the training state is saved after every epoch; a checkpoint's `resume_from`
        (such a saved state) continues after its last finished epoch, as if the run had never stopped.
        """
        resume_from = checkpoint.resume_from if checkpoint is not None else None
        with numerics(self.deterministic):  # for this fit only: restored when it ends
            network = model.network.to(self.device, memory_format=self.memory_format)
            result = FitResult(self.monitor)
            self.average.start(network)
            if self.class_weights:
                self.criterion.weight = balanced_class_weights(train_loader.dataset).to(self.device)
            if self.mixup_alpha or self.cutmix_alpha:
                self.mixing = batch_mixing(self.mixup_alpha, self.cutmix_alpha, _classes(model))
            best_state = copy.deepcopy(network.state_dict())
            first_epoch = 0
            if resume_from is not None:
                first_epoch, best_state = self._restore(resume_from, network, optimizer, schedule, train_loader, result)
                log.info("resuming after epoch %d/%d", first_epoch, self.epochs)
            else:
                self._start_from(strategy.validated_start(), result, metrics_logger)
            val_images = len(val_loader.dataset)
            for epoch in range(first_epoch, self.epochs):
                if not self.stopping.before_epoch(epoch, result.history):
                    break
                started = time.perf_counter()
                lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}
                strategy.start_epoch(model, epoch)
                if isinstance(train_loader.sampler, DistributedSampler):
                    train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
                in_time = lambda: self.stopping.between_steps(self._validation(val_images))  # noqa: E731
                row = self.train_one_epoch(self._parallel(network), optimizer, schedule, train_loader, epoch, in_time)
                if schedule.interval == "epoch":
                    schedule.scheduler.step()
                validation_started = time.perf_counter()
                predictions = self.predict(self.average.evaluated(network), val_loader)
                self._validation_seconds = time.perf_counter() - validation_started
                row.update(metrics.validation_metrics(predictions))
                row.update(lr=list(lrs.values())[-1], epoch_seconds=time.perf_counter() - started)
                if len(lrs) > 1:
                    row.update({f"lr_{name}": lr for name, lr in lrs.items()})
                result.history.append(row)
                if metrics.is_better(row[self.monitor], result.best.get(self.monitor), self.direction):
                    result.best_epoch, result.best_predictions = epoch + 1, predictions
                    best_state = copy.deepcopy(self.average.evaluated(network).state_dict())
                if checkpoint is not None:
                    # Saved before the metrics are logged: a resume logs what a crash in between left unlogged.
                    checkpoint.save(
                        self._state(epoch + 1, network, optimizer, schedule, train_loader, result, best_state)
                    )
                metrics_logger.log_metrics(row, step=epoch + 1)
                log.info(
                    "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs, %.0f img/s",
                    epoch + 1, self.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                    row["epoch_seconds"], row["images_per_second"],
                )  # fmt: skip
                if not self.stopping.after_epoch(result.history, self.monitor, self.direction, result.best_value):
                    break
            result.stopped, result.stopping = self.stopping.reason, self.stopping.summary(len(result.history))
            result.tta = self.tta_applied  # the logged model answers as it was validated
            if result.stopped:
                log.info("stopped after epoch %d/%d: %s", len(result.history), self.epochs, result.stopped)
            network.load_state_dict(best_state)
            network.eval()
            log.info(
                "best %s %.4f at epoch %d; its weights are restored", self.monitor, result.best_value, result.best_epoch
            )
            return result

    def _start_from(self, start: Predictions | None, result: FitResult, metrics_logger: MetricsLogger) -> None:
        """Epoch 0, from the validation predictions of a model the strategy has trained already: logged at
        step 0, and the best so far (when the monitored metric is a validation one)."""
        if start is None or self.monitor not in metrics.VALIDATION_METRICS:
            return
        result.start, result.best_predictions = metrics.validation_metrics(start), start
        metrics_logger.log_metrics(result.start, step=0)
        log.info("epoch 0/%d  val loss %.4f acc %.4f (the model before the first epoch)",
                 self.epochs, result.start["val_loss"], result.start["val_acc"])  # fmt: skip

    def _validation(self, images: int) -> float:
        """Seconds a validation pass over `images` will take: as the last one did; before any, as a third of
        training on as many images (a forward pass without the backward)."""
        if self._validation_seconds is not None:
            return self._validation_seconds
        return (self._seconds_per_image or 0.0) * images / 3

    def _to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        # Images get the memory format; cached feature vectors (2-D) have none.
        memory_format = self.memory_format if inputs.dim() == 4 else torch.preserve_format
        return inputs.to(self.device, memory_format=memory_format, non_blocking=True)  # async from pinned memory

    def _parallel(self, network: nn.Module) -> nn.Module:
        """Under torchrun: DistributedDataParallel, which averages gradients over the processes. Wrapped
        each epoch, after the strategy has chosen what trains, as DDP only syncs what trains when wrapped."""
        if not self.processes.distributed:
            return network
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=device_ids)

    def _state(
        self,
        epochs_done: int,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        train_loader: DataLoader,
        result: FitResult,
        best_state: dict[str, torch.Tensor],
    ) -> TrainingState:
        best = result.best_predictions
        return TrainingState(
            epochs_done=epochs_done,
            # After an improving epoch the weights are the best ones (unless the best are an average): the same
            # tensors are written once.
            network=best_state
            if result.best_epoch == epochs_done and self.average.decay is None
            else network.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=schedule.scheduler.state_dict(),
            grad_scaler=self.scaler.state_dict(),
            rng=rng_states(train_loader.generator),
            history=result.history,
            best_epoch=result.best_epoch,
            best_network=best_state,
            best_logits=best.logits if best else None,
            best_labels=best.labels if best else None,
            average=self.average.state_dict(),
        )

    def _restore(
        self,
        state: TrainingState,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        train_loader: DataLoader,
        result: FitResult,
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """Put a saved state back; returns the epochs already done and the best weights so far."""
        network.load_state_dict(state.network)
        optimizer.load_state_dict(state.optimizer)
        schedule.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.grad_scaler)
        restore_rng_states(state.rng, train_loader.generator)
        self.average.load_state_dict(state.average)
        result.history, result.best_epoch = list(state.history), state.best_epoch
        if state.best_logits is not None:
            result.best_predictions = Predictions(state.best_logits, state.best_labels)
            if state.best_epoch == 0:  # no epoch has beaten epoch 0 (Strategy.validated_start) yet
                result.start = metrics.validation_metrics(result.best_predictions)
        return state.epochs_done, state.best_network

    def train_one_epoch(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        loader: DataLoader,
        epoch: int,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> dict[str, float]:
        """One pass over `loader` with gradients: the training metrics (`metrics.TRAINING_METRICS`) and speed.
        Before each step after the first, `keep_going()` may end the pass (a time budget running out)."""
        started = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        batches = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            leave=False,
            disable=None if self.progress and self.processes.is_main else True,
        )
        for step, (images, labels) in enumerate(batches, start=1):
            if step > 1 and not keep_going():
                break
            images, labels = self._to_device(images), labels.to(self.device, non_blocking=True)
            targets = labels
            if self.mixing is not None and images.dim() == 4:  # images: cached feature vectors are not mixed
                images, targets = self.mixing(images, labels)
            optimizer.zero_grad()
            with self.autocast():
                logits = network(images)
                loss = self.criterion(logits, targets)
            if not math.isfinite(loss.item()):
                lr = optimizer.param_groups[-1]["lr"]
                raise TLError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step} (lr={lr:g}); lower lr or check the data"
                )
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            self.average.update(network)
            if schedule.interval == "step":
                schedule.scheduler.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()  # mixed images: against the first image's label
            seen += len(labels)
            self._seconds_per_image = (time.perf_counter() - started) / seen
            batches.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)  # drawn at tqdm's own pace
        total_loss, correct, seen = self.processes.sum(total_loss, correct, seen)  # over all processes
        # Images actually trained on: a dropped lone last image is not counted.
        return {
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "images_per_second": seen / (time.perf_counter() - started),
        }

    @torch.no_grad()
    def predict(self, network: nn.Module, loader: DataLoader) -> Predictions:
        """Every batch's logits (in fp32, on the CPU) and labels, in the loader's order. With `tta`, images
        (not cached feature vectors, which have no mirror image) are scored with their mirror image too, and
        the logits are the log of the averaged probabilities."""
        network.eval()
        logits, labels = [], []
        for images, batch_labels in loader:
            with self.autocast():
                inputs = self._to_device(images)
                self.tta_applied = self.tta and inputs.dim() == 4
                if self.tta_applied:
                    logits.append(class_probabilities(network, inputs, tta=True).log().cpu())
                else:
                    logits.append(network(inputs).float().cpu())
            labels.append(batch_labels)
        return Predictions(torch.cat(logits), torch.cat(labels))
