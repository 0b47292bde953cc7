import pytest
import torch

from tl.core import metrics
from tl.core.errors import TLError
from tl.core.metrics import Predictions


def test_validation_metrics_are_computed_by_name_from_the_predictions():
    predictions = Predictions(
        torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1, 1, 0])
    )
    values = metrics.validation_metrics(predictions)
    assert values.keys() == metrics.VALIDATION_METRICS.keys()
    assert values["val_acc"] == 0.75  # the tie in the last row goes to class 0 (argmax takes the first)
    expected_loss = (3 * torch.log(1 + torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0)) + 2) / 4
    assert values["val_loss"] == pytest.approx(expected_loss.item(), rel=1e-6)


def test_the_direction_is_the_metrics_own_unless_mode_says_otherwise():
    assert metrics.direction("val_acc") == "max" and metrics.direction("val_loss") == "min"
    assert metrics.direction("train_loss", "auto") == "min" and metrics.direction("val_loss", "max") == "max"
    assert metrics.optuna_direction("val_loss") == "minimize" and metrics.optuna_direction("val_acc") == "maximize"
    with pytest.raises(TLError, match="monitor=val_f2 is not a metric tl logs each epoch; choose one of train_loss"):
        metrics.direction("val_f2")
    with pytest.raises(TLError, match="mode=up is not allowed"):
        metrics.direction("val_acc", "up")


def test_better_means_strictly_better_so_a_tie_keeps_the_earlier_epoch():
    assert metrics.is_better(0.5, None, "max") and metrics.is_better(0.5, None, "min")
    assert metrics.is_better(0.6, 0.5, "max") and not metrics.is_better(0.5, 0.5, "max")
    assert metrics.is_better(0.4, 0.5, "min") and not metrics.is_better(0.6, 0.5, "min")


def test_accuracy_is_the_exact_fraction_not_a_float32_one():
    labels = torch.zeros(400, dtype=torch.long)
    logits = torch.zeros(400, 2)
    logits[319:, 1] = 1.0  # 319 of 400 right
    assert metrics.val_acc(Predictions(logits, labels)) == 319 / 400 == 0.7975


def test_balanced_accuracy_is_the_mean_of_each_classs_recall():
    # 8 images of class 0, 2 of class 1; the model answers 0 for all but one image of class 1.
    labels = torch.tensor([0] * 8 + [1] * 2)
    logits = torch.zeros(10, 2)
    logits[:9, 0], logits[9, 1] = 1.0, 1.0
    predictions = Predictions(logits, labels)
    assert metrics.val_acc(predictions) == 0.9
    assert metrics.val_balanced_acc(predictions) == (8 / 8 + 1 / 2) / 2  # 0.75
    assert metrics.direction("val_balanced_acc") == "max"
