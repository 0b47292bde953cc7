"""`lr=auto`: the learning rate found by a range test (Smith, 2015; fastai's `lr_find`) before the fit.

The test trains for `steps` batches with a learning rate that grows exponentially from `start_lr` to `end_lr`,
records the smoothed loss, and suggests the rate where the loss falls fastest (its steepest descent); then the
weights, the optimizer and the BatchNorm statistics are put back as they were, so the fit starts fresh with
the suggested rate. The test itself is torch-lr-finder's (`LRFinder.range_test` and `reset`); the
suggestion is computed here, as its `plot` would, without drawing through pyplot or printing.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from tl.models.backbones import TransferModel
from tl.training.strategies import ParamGroups, Strategy

log = logging.getLogger(__name__)

SKIP_START, SKIP_END = 10, 5  # the first steps (noise) and the last (divergence) are not considered


@dataclass
class RangeTest:
    """The learning rates tried, the smoothed loss at each, and the suggested rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float

    def figure(self) -> Figure:
        """Loss against learning rate (log scale), the suggestion marked."""
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        ax = figure.add_subplot()
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color="red", linestyle="--", label=f"suggested lr {self.suggestion:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="lr range test")
        ax.legend()
        return figure


def resolve(
    cfg: DictConfig,
    model: TransferModel,
    trained: TransferModel,
    strategy: Strategy,
    loader: DataLoader,
    device: torch.device,
) -> RangeTest | None:
    """For `lr=auto`: run the range test on what the fit trains (`trained`, on `loader`) and set `cfg.lr` to
    its suggestion, which the optimizer, the run's params and its checkpoint then hold; None otherwise."""
    if cfg.lr != "auto":
        return None
    test = range_test(model, trained.network, strategy, instantiate(cfg.optimizer, lr=1.0), loader, device)
    cfg.lr = test.suggestion
    return test


def range_test(
    model: TransferModel,
    network: nn.Module,
    strategy: Strategy,
    optimizer_for: Callable[[ParamGroups], torch.optim.Optimizer],
    loader: DataLoader,
    device: torch.device,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
) -> RangeTest:
    """Run the range test on `network` (what the fit trains: the model's network, or its head on cached
    features), with the parameter groups `strategy` gives `model` in its first epoch; leave them as they were."""
    from torch_lr_finder import LRFinder  # here: it imports pyplot, which only lr=auto needs

    strategy.start_epoch(model, 0)
    optimizer = optimizer_for(strategy.param_groups(model, start_lr))
    finder = LRFinder(network, optimizer, nn.CrossEntropyLoss(), device=device)
    with contextlib.redirect_stdout(io.StringIO()):  # its closing print() is not tl's to show
        finder.range_test(loader, start_lr=start_lr, end_lr=end_lr, num_iter=steps)
    finder.reset()  # the weights, buffers and optimizer state from before the test
    lrs, losses = finder.history["lr"], finder.history["loss"]
    considered = slice(SKIP_START, -SKIP_END) if len(lrs) > SKIP_START + SKIP_END + 2 else slice(None)
    tried, smoothed = lrs[considered], losses[considered]
    suggestion = float(tried[int(np.gradient(np.array(smoothed)).argmin())])
    log.info("lr=auto: the range test suggests lr=%.3g (steepest descent of the loss)", suggestion)
    return RangeTest(list(lrs), list(losses), suggestion)
