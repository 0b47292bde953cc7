"""How sure a result is: intervals for one run's validation scores, and paired tests between runs.

The interval and the exact test are written here, a few lines each, rather than taken from
scipy.stats: importing scipy.stats takes a large part of a second, which every run's wrap-up would
pay (benchmarks/overhead.py times the wrap-up). tests/test_statistics.py checks them against scipy.
The t-test over repeats, run once per sweep, is scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy `correct / n`.

    Wilson rather than the textbook normal ("Wald") interval, whose coverage falls well below the
    nominal level near 0 or 1 and on small sets (the regime of transfer learning's validation sets),
    and rather than Clopper-Pearson's exact interval, which is wider than it needs to be.
    """
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-averaged F1 along the last axis: for (n,) arrays a scalar, for (B, n) arrays one per row.
    A class with no true and no predicted image counts as F1 0, as in the per-class report. Counted with
    one bincount per quantity, so the cost grows with B * n, not with the number of classes too."""
    single = np.ndim(labels) == 1
    labels, predicted = np.atleast_2d(labels), np.atleast_2d(predicted)
    rows = np.arange(len(labels))[:, None] * num_classes  # each row's classes get their own bins
    size = len(labels) * num_classes

    def count(bins: np.ndarray) -> np.ndarray:
        return np.bincount(bins.ravel(), minlength=size).reshape(len(labels), num_classes)

    true_positives = count((rows + labels)[labels == predicted])
    actual_plus_predicted = count(rows + labels) + count(rows + predicted)  # 2 TP + FP + FN
    f1 = np.divide(2 * true_positives, actual_plus_predicted, out=np.zeros(true_positives.shape),
                   where=actual_plus_predicted > 0)  # fmt: skip
    result = f1.mean(axis=1)
    return result[0] if single else result


def bootstrap_interval(
    labels: np.ndarray,
    predicted: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(labels, predicted)`, resampling the images with
    replacement (each image keeps its label and prediction together). `statistic` takes (B, n) arrays;
    the resamples are drawn in chunks of about a million images, so memory stays bounded on large sets."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // max(1, len(labels)))
    values = []
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, len(labels), size=(min(chunk, resamples - start), len(labels)))
        values.append(statistic(labels[picks], predicted[picks]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(values), [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(first_correct: np.ndarray, second_correct: np.ndarray) -> float:
    """Two-sided p-value of McNemar's exact test: do two models that were scored on the same images
    differ in accuracy? Only the images exactly one of them gets right count (b and c); under the
    null hypothesis each such image is a fair coin flip, so the p-value is a binomial tail."""
    b = int(np.sum(first_correct & ~second_correct))
    c = int(np.sum(~first_correct & second_correct))
    discordant = b + c
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(b, c) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_t_test(first: list[float], second: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test over matched repeats (the same seeds or folds); None when
    there are fewer than two pairs. Identical pairs give 1.0 (no difference at all)."""
    if len(first) < 2:
        return None
    differences = np.subtract(first, second)
    if not differences.any():
        return 1.0
    from scipy.stats import ttest_rel

    p_value = float(ttest_rel(first, second).pvalue)
    return 0.0 if math.isnan(p_value) else p_value  # nan: constant non-zero differences, a certain difference


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values tested together (each configuration against the best):
    with them, "p < 0.05 somewhere" keeps its 5% chance of a false difference however many are tested.
    The i-th smallest of m is multiplied by m - i + 1, then made no smaller than the one before it;
    None (no test) stays None and does not count."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p_value, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p_value))
        adjusted[index] = running
    return adjusted
