"""What a person looks at to judge a model: confusion matrix, per-class scores, curves, worst errors.

Pure functions from predictions to tables and matplotlib figures; `tracking.py` logs them.
Figures are built with matplotlib's object API (no pyplot): headless, and nothing left open.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from tl.core.metrics import Predictions
from tl.models.backbones import Preprocess


def confusion_matrix(predictions: Predictions, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    pairs = predictions.labels * num_classes + predictions.predicted
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes).numpy()


def per_class_report(matrix: np.ndarray, classes: list[str]) -> tuple[list[dict], dict[str, float]]:
    """Precision, recall, F1 and support per class; and their macro averages."""
    true_positives = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    rows = [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, actual, strict=True)
    ]
    macro = {
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
    return rows, macro


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str]) -> Figure:
    """The confusion matrix as a heat map with counts: true class down, predicted across."""
    size = max(5.0, 0.6 * len(classes) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    axes.set_title("confusion matrix (val)")
    figure.tight_layout()
    return figure


def plot_curves(history: list[dict[str, float]]) -> Figure:
    """Loss and accuracy per epoch, train and validation."""
    epochs = range(1, len(history) + 1)
    figure = Figure(figsize=(10, 4))
    loss_axes, acc_axes = figure.subplots(1, 2)
    for axes, metric in ((loss_axes, "loss"), (acc_axes, "acc")):
        for split in ("train", "val"):
            axes.plot(epochs, [row[f"{split}_{metric}"] for row in history], marker="o", label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.legend()
        axes.grid(alpha=0.3)
    figure.suptitle("training curves")
    figure.tight_layout()
    return figure


def plot_worst_misclassified(
    predictions: Predictions, dataset: Dataset, classes: list[str], preprocess: Preprocess, count: int = 16
) -> Figure:
    """The validation images the model got wrong with the highest confidence, tiled into one picture.

    One axes holding one image, the tiles' captions as text on it, drawn at about 200 px a tile:
    sixteen axes with a tight layout at 300 px a tile were a large share of a run's wrap-up
    (benchmarks/overhead.py times it)."""
    wrong = (predictions.predicted != predictions.labels).nonzero().flatten()
    confidence = predictions.probabilities.max(1).values[wrong]
    worst = wrong[confidence.argsort(descending=True)][:count].tolist()
    columns, side = 4, preprocess.input_size
    rows = max(1, -(-len(worst) // columns))
    scale = max(1.0, 200 / side)  # figure pixels per image pixel
    gap, caption = math.ceil(8 / scale), math.ceil(40 / scale)  # in image pixels: 8 and 40 figure pixels
    tiles = np.ones((rows * (caption + side) + gap, columns * (side + gap) + gap, 3))
    dpi = 100
    height = tiles.shape[0] * scale / dpi
    title = 0.5  # inches above the tiles for the figure's title
    figure = Figure(figsize=(tiles.shape[1] * scale / dpi, height + title), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, height / (height + title)))
    axes.axis("off")
    mean, std = torch.tensor(preprocess.mean)[:, None, None], torch.tensor(preprocess.std)[:, None, None]
    for tile, index in enumerate(worst):
        row, column = divmod(tile, columns)
        top, left = row * (caption + side) + caption, gap + column * (side + gap)
        tiles[top : top + side, left : left + side] = (dataset[index][0] * std + mean).clamp(0, 1).permute(1, 2, 0)
        true, predicted = classes[predictions.labels[index]], classes[predictions.predicted[index]]
        probability = predictions.probabilities[index].max().item()
        axes.text(left + side / 2, top - 2 / scale, f"true: {true}\npredicted: {predicted} ({probability:.2f})",
                  ha="center", va="bottom", fontsize=9)  # fmt: skip
    axes.imshow(tiles, interpolation="nearest")
    if not worst:
        axes.text(tiles.shape[1] / 2, tiles.shape[0] / 2, "no misclassified images", ha="center", va="center")
    figure.suptitle("worst misclassified validation images")
    return figure


def plot_sweep(configurations: list[dict], metric: str = "mean_best_val_acc") -> Figure:
    """Each configuration of a sweep (tl/sweeps/comparison.py rows, best first): `metric` as a bar, with its
    error bar (one standard deviation over repeats, or a single run's 95% interval). Green: the best;
    light green: those a paired test cannot tell from it."""
    figure = Figure(figsize=(8, 1.5 + 0.45 * len(configurations)))
    axes = figure.subplots()
    rows = configurations[::-1]  # barh draws bottom up: the best on top
    names = [row["configuration"] if len(row["configuration"]) <= 48 else row["configuration"][:45] + "..."
             for row in rows]  # fmt: skip
    values = [row[metric] for row in rows]
    below = [row[metric] - row["error_low"] if row["error_low"] is not None else 0.0 for row in rows]
    above = [row["error_high"] - row[metric] if row["error_high"] is not None else 0.0 for row in rows]
    colors = ["tab:green" if row is configurations[0] else "yellowgreen" if row["indistinguishable_from_best"]
              else "tab:blue" for row in rows]  # fmt: skip
    bars = axes.barh(names, values, xerr=[below, above], capsize=4, color=colors)
    labels = [f"{row[metric]:.3f} (n={row['n']})" for row in rows]
    axes.bar_label(bars, labels=labels, padding=3, label_type="center", color="white", fontsize=8)
    highest = max(row[metric] + error for row, error in zip(rows, above, strict=True))
    is_fraction = all(0 <= v <= 1 for v in values) and highest <= 1  # accuracies: the whole 0..1 scale
    axes.set_xlim(0, 1.05 if is_fraction else 1.15 * highest or 1.0)
    label = metric.replace("_", " ")
    axes.set_xlabel(f"{label}; error bars: sd over repeats, or the run's 95% interval")
    axes.set_title(f"sweep: {label} per configuration")
    figure.tight_layout()
    return figure
