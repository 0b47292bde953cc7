"""When a fit stops before its last epoch: the monitored metric has stopped improving (`patience`), the
time the user gave it (`budget`) would run out, or a judge of each epoch says so (a search's pruner).

The epoch loop asks `Stopping.before_epoch` whether another epoch fits the budget, `Stopping.between_steps`
whether the current one may go on (an epoch longer than what is left is cut short and validated), and
`Stopping.after_epoch` whether the metric still improves. Either way the best epoch's weights are the ones
kept, as after a full run. The budget counts from `started` (run.py's start: what the user waits for) and
keeps `reserve` seconds for what follows the fit: validating a cut epoch, logging the model and figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tl.core.checks import check_value, duration_seconds
from tl.core.errors import TLError

# Asked after each epoch with its number (from 1) and the best monitored value so far (what the fit would
# return if it stopped now): a reason to stop, or None.
EpochJudge = Callable[[int, float], "str | None"]


@dataclass
class Stopping:
    """Early stopping by `patience` epochs without an improvement of the monitored metric by more than
    `min_delta`, and a time `budget` (seconds, or `90s`/`5m`), from `started` (a `time.monotonic()`)."""

    patience: int | None = None
    min_delta: float = 0.0
    budget: str | float | None = None
    reserve: float = 8.0  # seconds kept for the wrap-up after the fit
    started: float = field(default_factory=time.monotonic)
    judge: EpochJudge | None = None  # e.g. an Optuna trial's pruner (tl/sweeps/pruning.py)
    reason: str | None = field(default=None, init=False)  # why the fit stopped early; None: it did not

    def __post_init__(self) -> None:
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise TLError(f"trainer.patience={self.patience} is not allowed: null or a whole number >= 1")
        if self.min_delta < 0:
            raise TLError(f"trainer.min_delta={self.min_delta} is not allowed: a number >= 0")
        check_value("budget", self.budget)
        self.seconds = duration_seconds(self.budget)

    @property
    def deadline(self) -> float | None:
        """When the fit must be over (time.monotonic()), with the wrap-up's reserve kept; None: no budget."""
        return None if self.seconds is None else self.started + self.seconds - self.reserve

    def before_epoch(self, epoch: int, history: list[dict[str, float]]) -> bool:
        """Whether epoch `epoch` (0-based) may start: the first always does; a later one if an epoch as long as
        the mean of those done still ends before the deadline."""
        if self.deadline is None or not history:
            return True
        needed = sum(row["epoch_seconds"] for row in history) / len(history)
        if time.monotonic() + needed <= self.deadline:
            return True
        self.reason = f"budget: {self.seconds:g} s would not hold another epoch of about {needed:.0f} s"
        return False

    def between_steps(self, validation_seconds: float) -> bool:
        """Whether the epoch may take another step and still be validated (in about `validation_seconds`)
        before the deadline."""
        if self.deadline is None or time.monotonic() + validation_seconds <= self.deadline:
            return True
        self.reason = f"budget: {self.seconds:g} s ran out during an epoch, which was cut short"
        return False

    def after_epoch(
        self, history: list[dict[str, float]], monitor: str, direction: str, best: float | None = None
    ) -> bool:
        """Whether to go on after the epochs in `history`: no, once `patience` epochs in a row failed to beat
        the best before them by more than `min_delta`, when the judge gives a reason, or when a budget ran out
        during the epoch. `best`: the best value so far, for the judge (the trainer's, which counts a strategy's
        epoch 0 too); by default the best of `history`."""
        if self.reason is not None:
            return False
        if self.judge is not None:
            values = [row[monitor] for row in history]
            if best is None:
                best = max(values) if direction == "max" else min(values)
            self.reason = self.judge(len(history), best)
            if self.reason is not None:
                return False
        if self.patience is None or len(history) <= self.patience:
            return True
        values = [row[monitor] for row in history]
        before, recent = values[: -self.patience], values[-self.patience :]
        best_before = max(before) if direction == "max" else min(before)
        sign = 1 if direction == "max" else -1
        if any(sign * (value - best_before) > self.min_delta for value in recent):
            return True
        self.reason = f"patience: {monitor} did not improve by more than {self.min_delta:g} in {self.patience} epochs"
        return False

    def summary(self, epochs_done: int) -> dict[str, float]:
        """What the run logs of how the fit ended: the epochs done, and the budget's seconds and those used."""
        used = {"budget_seconds": self.seconds, "budget_used_seconds": time.monotonic() - self.started}
        return {"epochs_done": float(epochs_done), **(used if self.seconds is not None else {})}
