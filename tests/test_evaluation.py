import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from tl.core.metrics import Predictions
from tl.evaluation import reports
from tl.models.backbones import Preprocess

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
    matrix = reports.confusion_matrix(predictions, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    rows, macro = reports.per_class_report(matrix, CLASSES)
    assert rows[1] == {"class": "bees", "precision": 2 / 3, "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert macro["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_a_class_never_predicted_scores_zero_not_nan():
    matrix = np.array([[2, 0], [2, 0]])
    rows, macro = reports.per_class_report(matrix, ["a", "b"])
    assert rows[1]["precision"] == 0.0 and rows[1]["f1"] == 0.0 and not np.isnan(macro["macro_f1"])


def figures(predicted: list[int], accuracy: float, seed: int) -> dict[str, np.ndarray]:
    """Each figure as grey pixels, drawn from data that depend on the arguments."""
    predictions = predictions_for([0, 1, 2, 2], predicted, [3.0, 1.0, 2.0, 1.0])
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    dataset = TensorDataset(images, predictions.labels)
    history = [{"train_loss": 1.0, "val_loss": 0.9, "train_acc": 0.5, "val_acc": 0.6},
               {"train_loss": 0.5, "val_loss": 0.7, "train_acc": accuracy, "val_acc": accuracy}]  # fmt: skip
    pre = Preprocess(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3)
    drawn = {
        "confusion": reports.plot_confusion_matrix(reports.confusion_matrix(predictions, 3), CLASSES),
        "curves": reports.plot_curves(history),
        "worst": reports.plot_worst_misclassified(predictions, dataset, CLASSES, pre),
        "sweep": reports.plot_sweep(
            [
                {
                    "configuration": "lr=0.1",
                    "n": 3,
                    "mean_best_val_acc": accuracy,
                    "error_low": accuracy - 0.05,
                    "error_high": accuracy + 0.05,
                    "indistinguishable_from_best": None,
                },
                {
                    "configuration": "lr=0.2",
                    "n": 1,
                    "mean_best_val_acc": 0.5,
                    "error_low": None,
                    "error_high": None,
                    "indistinguishable_from_best": False,
                },
            ]
        ),  # fmt: skip
    }
    return {name: png_pixels(figure) for name, figure in drawn.items()}


def test_figures_draw_their_data():
    # The same figures from other data must look different: a blank canvas, or a figure that ignores its
    # data (only axes and titles), would not.
    first, second = figures([1, 1, 0, 2], 0.9, seed=0), figures([0, 2, 1, 1], 0.2, seed=1)
    for name, pixels in first.items():
        assert pixels.std() > 5, name  # not a blank canvas
        assert pixels.shape == second[name].shape, name
        assert (pixels != second[name]).mean() > 0.01, name  # the data is drawn


def test_worst_misclassified_are_the_most_confident_errors():
    predictions = predictions_for([0, 1, 2, 2], [1, 1, 0, 0], [3.0, 9.0, 1.0, 5.0])
    figure = reports.plot_worst_misclassified(
        predictions, TensorDataset(torch.rand(4, 3, 8, 8), predictions.labels), CLASSES,
        Preprocess(8, 8, "bilinear", (0,) * 3, (1,) * 3),
    )  # fmt: skip
    captions = [text.get_text() for text in figure.axes[0].texts]  # one per tile, in order
    assert [caption.split("\n")[0] for caption in captions] == ["true: wasps", "true: ants", "true: wasps"]
