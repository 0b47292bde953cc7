"""Learning-rate schedules. Each `scheduler` config option points at one factory here.

Every factory takes the optimizer and the run's length and says whether it steps once per
epoch or once per batch, so the trainer needs no knowledge of which schedule it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer, lr_scheduler


@dataclass
class Schedule:
    """A learning-rate scheduler and when the trainer steps it: after every epoch or every batch."""

    scheduler: lr_scheduler.LRScheduler
    interval: Literal["epoch", "step"]


def step(optimizer: Optimizer, epochs: int, steps_per_epoch: int, step_size: int = 7, gamma: float = 0.1) -> Schedule:
    """Multiply the lr by `gamma` every `step_size` epochs (the tutorial's StepLR 7/0.1)."""
    return Schedule(lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch")


def cosine(optimizer: Optimizer, epochs: int, steps_per_epoch: int, eta_min: float = 0.0) -> Schedule:
    """Cosine decay from the lr to `eta_min` over the run, per epoch."""
    return Schedule(lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min), "epoch")


def onecycle(optimizer: Optimizer, epochs: int, steps_per_epoch: int, pct_start: float = 0.3) -> Schedule:
    """One cycle per batch, peaking at each parameter group's own lr (keeps discriminative lrs)."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    scheduler = lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=pct_start
    )
    return Schedule(scheduler, "step")


def none(optimizer: Optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    """A constant lr."""
    return Schedule(lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0), "epoch")
