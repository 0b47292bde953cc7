"""Stopping before the last epoch: patience on the monitored metric, a time budget, and the loss's label
smoothing; each fails when its option is switched off or broken."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.nn.functional import cross_entropy, log_softmax

from tests.test_trainer import fit, tiny_model
from tl.core.errors import TLError
from tl.training.stopping import Stopping
from tl.training.trainer import Trainer

ROWS = [{"val_acc": a, "epoch_seconds": 1.0} for a in (0.5, 0.7, 0.7, 0.69, 0.71)]


@pytest.mark.parametrize(
    ("patience", "min_delta", "stops_after"),
    [(2, 0.0, 4), (3, 0.0, None), (2, 0.02, 4), (None, 0.0, None), (1, 0.0, 3)],
)
def test_patience_stops_once_that_many_epochs_fail_to_beat_the_best_before_them(patience, min_delta, stops_after):
    stopping = Stopping(patience=patience, min_delta=min_delta)
    stopped = next((n for n in range(1, 6) if not stopping.after_epoch(ROWS[:n], "val_acc", "max")), None)
    assert stopped == stops_after
    assert (stopping.reason is not None) == (stops_after is not None)


def test_patience_for_a_metric_that_should_fall():
    rows = [{"val_loss": v} for v in (1.0, 0.8, 0.85, 0.9)]
    stopping = Stopping(patience=2)
    assert stopping.after_epoch(rows[:3], "val_loss", "min") and not stopping.after_epoch(rows, "val_loss", "min")


def test_a_judge_hears_every_epochs_number_and_value_and_its_reason_stops_the_fit():
    heard = []

    def judge(epoch: int, value: float) -> str | None:
        heard.append((epoch, value))
        return "pruned: hopeless" if epoch == 3 else None

    stopping = Stopping(judge=judge)
    stopped = next(n for n in range(1, 6) if not stopping.after_epoch(ROWS[:n], "val_acc", "max"))
    assert stopped == 3 and stopping.reason == "pruned: hopeless"
    assert heard == [(1, 0.5), (2, 0.7), (3, 0.7)]


def test_a_fit_with_patience_ends_early_keeps_the_best_weights_and_says_why():
    model = tiny_model()
    result, recorder, _ = fit(model, epochs=30, lr=0.5, patience=2)
    epochs = len(recorder.rows)
    assert epochs < 30 and result.stopped.startswith("patience: val_acc did not improve")
    assert result.stopping == {"epochs_done": float(epochs)}
    best = result.best_epoch - 1
    assert all(torch.equal(v, recorder.states[best][k]) for k, v in model.network.state_dict().items())
    full = fit(tiny_model(), epochs=30, lr=0.5)[1]  # without patience: every epoch
    assert len(full.rows) == 30


def test_a_budget_stops_before_an_epoch_that_would_not_end_in_time():
    stopping = Stopping(budget="10s", reserve=2.0, started=time.monotonic())
    assert stopping.before_epoch(0, [])  # the first epoch always runs
    assert stopping.before_epoch(1, [{"epoch_seconds": 3.0}])  # 0 + 3 <= 8
    assert not stopping.before_epoch(2, [{"epoch_seconds": 9.0}])
    assert stopping.reason.startswith("budget: 10 s")
    assert Stopping(budget=None).before_epoch(5, [{"epoch_seconds": 1e9}])  # no budget: no limit


def test_a_budget_cuts_a_long_epoch_short_and_the_fit_keeps_its_best_weights():
    model = tiny_model()
    trainer_started = time.monotonic() - 100  # a budget of 100 s, all but spent by the time the fit starts
    result, recorder, _ = fit(model, epochs=5, budget="100s", started=trainer_started)
    assert len(recorder.rows) == 1 and result.stopped.startswith("budget: 100 s ran out during an epoch")
    assert result.stopping["budget_seconds"] == 100 and result.stopping["budget_used_seconds"] >= 100


@pytest.mark.parametrize("budget", ["90", "90s", "1.5m", "1h", None])
def test_budgets_are_read_as_seconds(budget):
    assert Stopping(budget=budget).seconds == {"90": 90, "90s": 90, "1.5m": 90, "1h": 3600, None: None}[budget]


@pytest.mark.parametrize("budget", ["soon", "-5s", "0", "5d", True])
def test_a_budget_that_is_not_a_duration_is_one_line(budget):
    with pytest.raises(TLError, match=r"^budget=.* is not allowed: budget must be null or a duration"):
        Stopping(budget=budget)


def test_label_smoothing_changes_the_loss_by_the_known_amount():
    logits, labels = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), torch.tensor([0, 2])
    plain = Trainer(epochs=1, device="cpu").criterion(logits, labels)
    smoothed = Trainer(epochs=1, device="cpu", label_smoothing=0.1).criterion(logits, labels)
    # The target: 0.9 on the true class plus 0.1 spread over the 3 classes.
    by_hand = 0.9 * plain + 0.1 * (-log_softmax(logits, 1).mean(1)).mean()
    assert plain == pytest.approx(cross_entropy(logits, labels).item())
    assert smoothed.item() == pytest.approx(by_hand.item(), rel=1e-6) and not math.isclose(smoothed, plain)
    with pytest.raises(TLError, match="trainer.label_smoothing=1.5"):
        Trainer(epochs=1, device="cpu", label_smoothing=1.5)
