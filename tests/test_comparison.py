import pytest
from scipy import stats

from tl.sweeps.comparison import Job, compare, configuration_of


def jobs_over_seeds(values: dict[str, list[float]]) -> list[Job]:
    return [
        Job(f"{strategy}-{seed}", [f"strategy={strategy}", f"seed={seed}", "epochs=1"], value)
        for strategy, per_seed in values.items()
        for seed, value in enumerate(per_seed)
    ]


def test_repeats_over_seeds_are_one_configuration_with_mean_std_n_and_a_paired_test():
    values = {"finetune": [0.80, 0.84, 0.81], "frozen": [0.78, 0.79, 0.80]}
    rows = compare(jobs_over_seeds(values), ["strategy", "seed"], "max", lambda run_id: None, "best_val_acc")
    assert [row["configuration"] for row in rows] == ["strategy=finetune", "strategy=frozen"]
    best, other = rows
    assert (best["n"], best["mean_best_val_acc"]) == (3, pytest.approx(0.8166666))
    assert best["std_best_val_acc"] == pytest.approx(stats.tstd(values["finetune"]))
    assert best["p_value_vs_best"] is None and best["test"] == "best"
    assert other["p_value_vs_best"] == pytest.approx(stats.ttest_rel(values["frozen"], values["finetune"]).pvalue)
    assert other["test"] == "paired t-test, 3 matched repeats"
    assert other["indistinguishable_from_best"] == (other["p_value_vs_best"] >= 0.05)
    assert (best["error_low"], best["error_high"]) == pytest.approx(
        (best["mean_best_val_acc"] - best["std_best_val_acc"], best["mean_best_val_acc"] + best["std_best_val_acc"])
    )


def test_single_runs_are_compared_on_the_same_images_by_mcnemars_exact_test():
    jobs = [Job("a", ["lr=0.1"], 0.9, (0.8, 0.95)), Job("b", ["lr=0.2"], 0.6, (0.5, 0.7))]
    correct = {"a": {f"{i}.png": i < 9 for i in range(10)}, "b": {f"{i}.png": i < 6 for i in range(10)}}
    rows = compare(jobs, ["lr"], "max", correct.get, "best_val_acc")
    assert rows[1]["configuration"] == "lr=0.2" and rows[1]["p_value_vs_best"] == pytest.approx(0.25)  # 2 * 1/8
    assert rows[1]["test"] == "McNemar exact, 10 paired images" and rows[1]["indistinguishable_from_best"]
    assert (rows[0]["error_low"], rows[0]["error_high"]) == (0.8, 0.95)  # a single run: its own interval
    other_images = {"a": correct["a"], "b": {f"x{i}.png": True for i in range(10)}}
    rows = compare(jobs, ["lr"], "max", other_images.get, "best_val_acc")
    assert rows[1]["p_value_vs_best"] is None and rows[1]["indistinguishable_from_best"] is None


def test_lower_is_better_ranks_the_lowest_mean_first():
    values = {"finetune": [0.50, 0.40, 0.45], "frozen": [0.30, 0.35, 0.32]}
    rows = compare(jobs_over_seeds(values), ["strategy", "seed"], "min", lambda run_id: None, "best_val_loss")
    assert rows[0]["configuration"] == "strategy=frozen" and rows[0]["mean_best_val_loss"] == pytest.approx(0.3233333)


def test_a_sweep_over_seeds_alone_is_one_configuration_and_folds_are_repeats_too():
    job = Job("x", ["seed=2", "data.fold=3", "lr=0.1"], 0.5)
    assert configuration_of(job, ["seed"]) == "defaults"
    assert configuration_of(job, ["lr", "data.fold"]) == "lr=0.1"


def test_several_configurations_against_the_best_are_judged_on_holm_adjusted_p_values():
    # Three challengers on 20 shared images; McNemar's p against the best: 2/2^5 = 0.0625 (b=0, c=5),
    # 2/2^6 = 0.03125 and 2/2^7 = 0.015625. Holm: 3 * 0.015625 = 0.047, 2 * 0.03125 = 0.0625, then 0.0625.
    best = {f"{i}.png": True for i in range(20)}
    wrong = {name: {f"{i}.png": i >= k for i in range(20)} for name, k in (("b", 5), ("c", 6), ("d", 7))}
    jobs = [Job("a", ["lr=0.1"], 1.0)] + [Job(n, [f"lr=0.{k}"], 1 - k / 20) for n, k in (("b", 5), ("c", 6), ("d", 7))]
    rows = compare(jobs, ["lr"], "max", {"a": best, **wrong}.get, "best_val_acc")
    by_name = {row["configuration"]: row for row in rows}
    raw = [by_name[f"lr=0.{k}"]["p_value_vs_best"] for k in (5, 6, 7)]
    assert raw == pytest.approx([0.0625, 0.03125, 0.015625])
    adjusted = [by_name[f"lr=0.{k}"]["p_value_vs_best_holm"] for k in (5, 6, 7)]
    assert adjusted == pytest.approx([0.0625, 0.0625, 0.046875])
    # lr=0.6 is below 0.05 on its own but not once tested alongside the others.
    verdicts = [by_name[f"lr=0.{k}"]["indistinguishable_from_best"] for k in (5, 6, 7)]
    assert verdicts == [True, True, False]
