"""An exponential moving average (EMA) of the weights: validated, kept as the best and logged instead of the
raw weights, which it smooths over the last steps (about `1 / (1 - decay)` of them).

torch's own `AveragedModel` with its EMA rule does the averaging (and averages the BatchNorm buffers too);
this class only says where the epoch loop uses it.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tl.core.errors import TLError


class WeightAverage:
    """`decay` None: no average, the raw weights are used throughout; else an EMA with that decay (0.99-0.9999)."""

    def __init__(self, decay: float | None = None) -> None:
        if decay is not None and not 0.0 < decay < 1.0:
            raise TLError(f"trainer.ema_decay={decay} is not allowed: null, or a number between 0 and 1 such as 0.999")
        self.decay = decay
        self.averaged: AveragedModel | None = None

    def start(self, network: nn.Module) -> None:
        """Begin averaging `network`'s weights (from their current values)."""
        if self.decay is not None:
            multi_avg_fn = get_ema_multi_avg_fn(self.decay)
            self.averaged = AveragedModel(network, multi_avg_fn=multi_avg_fn, use_buffers=True)

    def update(self, network: nn.Module) -> None:
        """After an optimizer step: fold the new weights into the average."""
        if self.averaged is not None:
            self.averaged.update_parameters(network)

    def evaluated(self, network: nn.Module) -> nn.Module:
        """The network to validate and keep: the average, or `network` itself when there is none."""
        return self.averaged.module if self.averaged is not None else network

    def state_dict(self) -> dict[str, Any] | None:
        """The average's state, for a checkpoint (None when there is none)."""
        return self.averaged.state_dict() if self.averaged is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Put a checkpoint's average back (after `start`)."""
        if self.averaged is not None and state is not None:
            self.averaged.load_state_dict(state)
