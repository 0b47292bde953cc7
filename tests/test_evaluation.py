import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from tl import evaluation
from tl.evaluation import Predictions
from tl.models import Preprocess

CLASSES = ["ants", "bees", "wasps"]


def predictions_for(labels: list[int], predicted: list[int], confidence: list[float]) -> Predictions:
    logits = torch.zeros(len(labels), 3)
    for row, (p, c) in enumerate(zip(predicted, confidence, strict=True)):
        logits[row, p] = c
    return Predictions(logits, torch.tensor(labels))


def png_pixels(figure) -> np.ndarray:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def test_confusion_matrix_and_per_class_scores():
    predictions = predictions_for([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], [1.0] * 6)
    matrix = evaluation.confusion_matrix(predictions, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    rows, macro = evaluation.per_class_report(matrix, CLASSES)
    assert rows[1] == {"class": "bees", "precision": 2 / 3, "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert macro["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_a_class_never_predicted_scores_zero_not_nan():
    matrix = np.array([[2, 0], [2, 0]])
    rows, macro = evaluation.per_class_report(matrix, ["a", "b"])
    assert rows[1]["precision"] == 0.0 and rows[1]["f1"] == 0.0 and not np.isnan(macro["macro_f1"])


def test_figures_render_and_are_not_blank():
    predictions = predictions_for([0, 1, 2, 2], [1, 1, 0, 2], [3.0, 1.0, 2.0, 1.0])
    images = torch.rand(4, 3, 16, 16)
    dataset = TensorDataset(images, predictions.labels)
    history = [{"train_loss": 1.0, "val_loss": 0.9, "train_acc": 0.5, "val_acc": 0.6}] * 2
    pre = Preprocess(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3)
    figures = [
        evaluation.plot_confusion_matrix(evaluation.confusion_matrix(predictions, 3), CLASSES),
        evaluation.plot_curves(history),
        evaluation.plot_worst_misclassified(predictions, dataset, CLASSES, pre),
        evaluation.plot_sweep([{"run_name": "lr=0.1", "best_val_acc": 0.8, "best": True}]),
    ]
    for figure in figures:
        pixels = png_pixels(figure)
        assert pixels.std() > 5  # drawn on, not a blank canvas


def test_worst_misclassified_are_the_most_confident_errors():
    predictions = predictions_for([0, 1, 2, 2], [1, 1, 0, 0], [3.0, 9.0, 1.0, 5.0])
    titles = []
    figure = evaluation.plot_worst_misclassified(
        predictions, TensorDataset(torch.rand(4, 3, 8, 8), predictions.labels), CLASSES,
        Preprocess(8, 8, "bilinear", (0,) * 3, (1,) * 3),
    )  # fmt: skip
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert [t.split("\n")[0] for t in titles] == ["true: wasps", "true: ants", "true: wasps"]
