import math

import numpy as np
import pytest
from scipy import stats

from tl.evaluation import uncertainty


@pytest.mark.parametrize(("accuracy", "n"), [(0.8, 400), (0.9477, 153), (0.6, 60)])
def test_the_accuracy_interval_covers_the_true_accuracy_95_percent_of_the_time(accuracy, n):
    # Simulated validation sets of a model whose true accuracy is known: the default data (400 images
    # at about 0.8), the tutorial's (153 images at 0.9477) and a tiny one.
    draws = np.random.default_rng(0).binomial(n, accuracy, size=4000)
    covered = [low <= accuracy <= high for low, high in (uncertainty.wilson_interval(int(k), n) for k in draws)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_the_accuracy_interval_is_wilsons():
    for correct, n in [(319, 400), (145, 153), (0, 20), (20, 20), (7, 9)]:
        expected = stats.binomtest(correct, n).proportion_ci(0.95, method="wilson")
        assert uncertainty.wilson_interval(correct, n) == pytest.approx((expected.low, expected.high), abs=1e-9)
    low, high = uncertainty.wilson_interval(145, 153)  # the tutorial's frozen result: about +-3.8 points
    assert (high - low) / 2 == pytest.approx(0.038, abs=0.004)


def test_macro_f1_matches_the_per_class_definition_and_its_bootstrap_interval_holds_it():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    predicted = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    # class 0: tp 2, fp 1, fn 1 -> 2/3; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 2, fp 0, fn 1 -> 0.8
    assert uncertainty.macro_f1(labels, predicted, 3) == pytest.approx((2 / 3 + 0.8 + 0.8) / 3)
    many_labels = np.random.default_rng(1).integers(0, 3, 300)
    many_predicted = np.where(np.random.default_rng(2).random(300) < 0.7, many_labels, (many_labels + 1) % 3)
    point = uncertainty.macro_f1(many_labels, many_predicted, 3)
    low, high = uncertainty.bootstrap_interval(many_labels, many_predicted, lambda t, p: uncertainty.macro_f1(t, p, 3))
    assert low < point < high and 0.05 < high - low < 0.2


def test_mcnemars_exact_p_value_on_a_table_computed_by_hand():
    # 6 images only one model gets right: 1 for the first, 5 for the second. Under the null each is a coin
    # flip: p = 2 * P(X <= 1 | X ~ Binomial(6, 1/2)) = 2 * (1 + 6) / 64 = 0.21875.
    first = np.array([True] * 10 + [True] + [False] * 5 + [False] * 4)
    second = np.array([True] * 10 + [False] + [True] * 5 + [False] * 4)
    assert uncertainty.mcnemar_exact(first, second) == pytest.approx(0.21875)
    assert uncertainty.mcnemar_exact(second, first) == pytest.approx(0.21875)
    assert uncertainty.mcnemar_exact(first, first) == 1.0  # no discordant image: no evidence at all
    # 0 against 10: 2 / 1024.
    assert uncertainty.mcnemar_exact(np.array([False] * 10), np.array([True] * 10)) == pytest.approx(2 / 1024)
    assert uncertainty.mcnemar_exact(np.array([True, False]), np.array([False, True])) == 1.0  # capped


def test_the_paired_t_test_is_scipys_and_needs_two_pairs():
    first, second = [0.81, 0.79, 0.84], [0.78, 0.77, 0.80]
    assert uncertainty.paired_t_test(first, second) == pytest.approx(stats.ttest_rel(first, second).pvalue)
    differences = np.subtract(first, second)  # by hand: t = mean / (sd / sqrt(n)), 2 degrees of freedom
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(3))
    assert uncertainty.paired_t_test(first, second) == pytest.approx(2 * stats.t.sf(t, 2))
    assert uncertainty.paired_t_test([0.8], [0.7]) is None
    assert uncertainty.paired_t_test([0.8, 0.7], [0.8, 0.7]) == 1.0


def test_holms_adjustment_multiplies_the_smallest_by_the_number_of_tests_and_keeps_the_order():
    # By hand: sorted 0.01, 0.03, 0.04 of m=3 -> 0.03, 0.06, max(0.06, 0.04) = 0.06; None is not a test.
    assert uncertainty.holm([0.04, 0.01, None, 0.03]) == pytest.approx([0.06, 0.03, None, 0.06])
    assert uncertainty.holm([0.5, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert uncertainty.holm([0.02]) == [0.02] and uncertainty.holm([None]) == [None] and uncertainty.holm([]) == []
