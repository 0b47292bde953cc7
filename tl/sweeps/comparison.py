"""A sweep's jobs as configurations: repeats pooled, each configuration compared with the best one.

Jobs that differ only in `seed` or `data.fold` are repeats of one configuration: the configuration's
row gives the mean, standard deviation and count of the monitored metric. Each configuration is then
tested against the best one, on data already logged (no pass over the images):
- with repeats on both sides, matched by seed or fold: a paired t-test over the matched repeats;
- with one run each on the same validation images: McNemar's exact test on their predictions.
The p-values are adjusted for being tested together (Holm's method: with many configurations, some
small p-values would otherwise come by chance alone); an adjusted p-value at or above `ALPHA` marks a
configuration the sweep cannot tell apart from the best.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tl.core.checks import override_key
from tl.evaluation.uncertainty import holm, mcnemar_exact, paired_t_test
from tl.tracking.runs import run_name

REPEAT_KEYS = ("seed", "data.fold")  # what makes a job a repeat of a configuration, not another one
ALPHA = 0.05


@dataclass
class Job:
    """One finished job of a sweep, as the comparison sees it."""

    run_id: str
    overrides: list[str]  # the job's command-line overrides
    value: float  # its best epoch's monitored metric
    interval: tuple[float, float] | None = None  # its 95% interval, when the metric has one


def configuration_of(job: Job, swept: list[str]) -> str:
    """The job's swept values without the repeat keys: `strategy=frozen,seed=1` -> `strategy=frozen`."""
    return run_name(job.overrides, [key for key in swept if key not in REPEAT_KEYS] or ["(none)"])


def repeat_of(job: Job) -> str:
    """Which repeat the job is (`seed=1`, `data.fold=2`): what pairs it with the best configuration's jobs."""
    return ",".join(sorted(o for o in job.overrides if override_key(o) in REPEAT_KEYS))


def compare(
    jobs: list[Job],
    swept: list[str],
    direction: str,
    correct_of: Callable[[str], dict[str, bool] | None],
    metric: str,
) -> list[dict]:
    """One row per configuration, best first: n, mean, std, the p-value against the best (as tested and
    Holm-adjusted) and the test.

    `correct_of(run_id)`: for one run, whether it got each validation image right (by path), or None.
    """
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(configuration_of(job, swept), []).append(job)
    sign = 1 if direction == "max" else -1
    ranked = sorted(groups.items(), key=lambda item: -sign * statistics.mean(j.value for j in item[1]))
    best_name, best_jobs = ranked[0]
    rows = []
    for name, group in ranked:
        values = [job.value for job in group]
        p_value, test = (None, "best") if name == best_name else _test(group, best_jobs, correct_of)
        low, high = _spread(group)
        rows.append(
            {
                "configuration": name,
                "n": len(group),
                f"mean_{metric}": statistics.mean(values),
                f"std_{metric}": statistics.stdev(values) if len(values) > 1 else None,
                "error_low": low,
                "error_high": high,
                "p_value_vs_best": p_value,
                "p_value_vs_best_holm": None,  # below, once every configuration has been tested
                "test": test,
                "indistinguishable_from_best": None,
                "run_ids": " ".join(job.run_id for job in group),
            }
        )
    for row, adjusted in zip(rows, holm([row["p_value_vs_best"] for row in rows]), strict=True):
        row["p_value_vs_best_holm"] = adjusted
        row["indistinguishable_from_best"] = None if adjusted is None else adjusted >= ALPHA
    return rows


def _test(
    group: list[Job], best: list[Job], correct_of: Callable[[str], dict[str, bool] | None]
) -> tuple[float | None, str]:
    if len(group) == 1 and len(best) == 1:
        ours, theirs = correct_of(group[0].run_id), correct_of(best[0].run_id)
        if ours is None or theirs is None or ours.keys() != theirs.keys():
            return None, "none: not scored on the same validation images"
        paths = sorted(ours)
        first, second = (np.array([scored[p] for p in paths]) for scored in (ours, theirs))
        return mcnemar_exact(first, second), f"McNemar exact, {len(paths)} paired images"
    by_repeat = {repeat_of(job): job.value for job in best}
    pairs = [(job.value, by_repeat[repeat_of(job)]) for job in group if repeat_of(job) in by_repeat]
    if len(by_repeat) < len(best) or len({repeat_of(job) for job in group}) < len(group):
        pairs = []  # jobs alike in seed and fold (an Optuna search may repeat a trial): nothing pairs them
    if len(pairs) < 2:
        return None, "none: fewer than 2 repeats matched by seed or fold"
    first, second = zip(*pairs, strict=True)
    return paired_t_test(list(first), list(second)), f"paired t-test, {len(pairs)} matched repeats"


def _spread(group: list[Job]) -> tuple[float | None, float | None]:
    """The error bar: the mean plus and minus one standard deviation over repeats; for a single run,
    its own 95% interval when it has one."""
    values = [job.value for job in group]
    if len(values) > 1:
        mean, std = statistics.mean(values), statistics.stdev(values)
        return mean - std, mean + std
    return group[0].interval or (None, None)
