"""The validation predictions, the metrics of an epoch by name, and which epoch (or sweep job) is best.

Every epoch logs the training loop's own figures (`TRAINING_METRICS`) and one value per function in
`VALIDATION_METRICS`, computed from the validation predictions. `monitor` (any of these names) and
`mode` (`max`, `min` or `auto`: the metric's own direction) pick the best epoch, whose weights are
restored, the sweep's best job, the registry alias and Optuna's objective.

Light on purpose (torch is imported by the functions that compute): run.py checks `monitor` and
`mode` before it imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tl.core.errors import TLError

if TYPE_CHECKING:
    import torch

MODES = ("auto", "max", "min")


@dataclass
class Predictions:
    """A model's outputs on a labelled set: what every metric and every evaluation figure is computed from."""

    logits: torch.Tensor  # (N, classes)
    labels: torch.Tensor  # (N,)

    @property
    def predicted(self) -> torch.Tensor:
        """The top class of each image."""
        return self.logits.argmax(1)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax over the classes, per image."""
        return self.logits.softmax(1)


def val_loss(predictions: Predictions) -> float:
    """Mean cross-entropy of the validation set: the loss the head trains on."""
    from torch.nn.functional import cross_entropy

    return cross_entropy(predictions.logits, predictions.labels).item()


def val_acc(predictions: Predictions) -> float:
    """Fraction of validation images whose top class is right: the exact fraction (319/400 is 0.7975,
    not float32's 0.79750001 that MLflow's UI would show)."""
    return int((predictions.predicted == predictions.labels).sum()) / len(predictions.labels)


def val_balanced_acc(predictions: Predictions) -> float:
    """The mean over classes of the fraction of each class's images whose top class is right (each class's
    recall): on folders with unequal classes, a model that always answers the largest class scores 1/classes,
    not that class's share."""
    labels, predicted = predictions.labels, predictions.predicted
    recalls = [int((predicted[labels == c] == c).sum()) / int((labels == c).sum()) for c in labels.unique().tolist()]
    return sum(recalls) / len(recalls)


# name -> (the function of the validation predictions, the direction that is better). A new metric is
# one function above and one line here: it is then logged every epoch, as `best_<name>`, and can be
# monitored.
VALIDATION_METRICS: dict[str, tuple[Callable[[Predictions], float], str]] = {
    "val_loss": (val_loss, "min"),
    "val_acc": (val_acc, "max"),
    "val_balanced_acc": (val_balanced_acc, "max"),
}
# Computed by the training loop itself (tl/training/trainer.py), over the images it trained on.
TRAINING_METRICS = {"train_loss": "min", "train_acc": "max"}
DIRECTIONS = {**TRAINING_METRICS, **{name: direction for name, (_, direction) in VALIDATION_METRICS.items()}}


def validation_metrics(predictions: Predictions) -> dict[str, float]:
    """Every validation metric of these predictions, by name."""
    return {name: compute(predictions) for name, (compute, _) in VALIDATION_METRICS.items()}


def direction(monitor: str, mode: str = "auto") -> str:
    """`max` or `min`: which way `monitor` is better; `mode=auto` takes the metric's own direction."""
    if monitor not in DIRECTIONS:
        raise TLError(f"monitor={monitor} is not a metric tl logs each epoch; choose one of {', '.join(DIRECTIONS)}")
    if mode not in MODES:
        raise TLError(f"mode={mode} is not allowed: mode must be one of {', '.join(MODES)}")
    return DIRECTIONS[monitor] if mode == "auto" else mode


def is_better(value: float, best: float | None, way: str) -> bool:
    """Whether `value` beats `best` (None: nothing yet) in direction `way`; a tie keeps the earlier one."""
    if best is None:
        return True
    return value > best if way == "max" else value < best


def optuna_direction(monitor: str, mode: str = "auto") -> str:
    """Optuna's name for the direction (`maximize`/`minimize`), for `hydra.sweeper.direction`."""
    return "maximize" if direction(monitor, mode) == "max" else "minimize"
