"""benchmarks/: that the scripts run and report what they measured (their figures are not checked here)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import torch

from tests.helpers import ROOT, make_image_folder
from tl.core.provenance import cpu_model


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _benchmark_module("compare")
overhead = _benchmark_module("overhead")
serving = _benchmark_module("serving")


def test_ratios_are_to_the_tutorial_loop_of_the_same_scenario():
    results = [
        {"arm": "tutorial/finetune", "scenario": "finetune", "wall_s": 100.0, "epoch_s": 4.0, "best_val_acc": 0.80},
        {"arm": "tl-fast/finetune", "scenario": "finetune", "wall_s": 50.0, "epoch_s": 1.0, "best_val_acc": 0.81},
        {"arm": "tutorial/frozen", "scenario": "frozen", "wall_s": 60.0, "epoch_s": 2.0, "best_val_acc": 0.70},
        {"arm": "tl-fp32/frozen", "scenario": "frozen", "wall_s": 5.0, "epoch_s": None, "best_val_acc": 0.69},
    ]
    compare.add_ratios(results)
    fast, frozen = results[1], results[3]
    assert fast["speedup_wall"] == 2.0 and fast["epoch_time_ratio"] == 0.25
    assert fast["acc_points_vs_tutorial"] == pytest.approx(1.0)
    assert frozen["speedup_wall"] == 12.0 and "epoch_time_ratio" not in frozen
    assert frozen["acc_points_vs_tutorial"] == pytest.approx(-1.0)


def test_ratios_pair_the_runs_of_each_round_so_a_slow_spell_of_the_machine_cancels_out():
    def arm(name: str, epoch_seconds: list[float]) -> dict:
        repeats = [{"wall_s": 10 * s, "epoch_s": s, "best_val_acc": 0.5} for s in epoch_seconds]
        return {"arm": name, "scenario": "finetune", **compare.medians([{**r, "peak_mb": 1.0} for r in repeats]),
                "repeats": repeats}  # fmt: skip

    # The machine slowed down in round 2 and sped up in round 3; tl was 10% slower in rounds 1 and 2.
    tutorial, tl = arm("tutorial/finetune", [10.0, 20.0, 30.0]), arm("tl-fp32/finetune", [11.0, 22.0, 12.0])
    compare.add_ratios([tutorial, tl])
    assert tl["epoch_time_ratio"] == pytest.approx(1.1)  # not 12 / 20, the ratio of the medians
    assert tl["speedup_wall"] == pytest.approx(1 / 1.1)


def test_epoch_time_is_the_median_gap_between_epoch_ends():
    assert compare.median_epoch([10.0, 12.0, 13.0, 20.0]) == 2.0  # gaps 2, 1, 7
    assert compare.median_epoch([10.0]) is None


def test_repeated_runs_are_summed_up_by_their_medians_and_the_largest_memory_peak():
    runs = [
        {"wall_s": 10.0, "epoch_s": 2.0, "peak_mb": 900.0, "best_val_acc": 0.5},
        {"wall_s": 30.0, "epoch_s": None, "peak_mb": 700.0, "best_val_acc": 0.7},
        {"wall_s": 20.0, "epoch_s": 4.0, "peak_mb": 800.0, "best_val_acc": 0.6},
    ]
    assert compare.medians(runs) == {"wall_s": 20.0, "epoch_s": 3.0, "peak_mb": 900.0, "best_val_acc": 0.6}


def test_the_default_data_is_the_shipped_sample_cut_to_the_tutorials_size(tmp_path):
    root = compare.tutorial_sized_sample(tmp_path / "data")
    for split, count in (("train", 240), ("val", 150)):
        classes = sorted(p.name for p in (root / split).iterdir())
        assert len(classes) == 10 and sum(1 for _ in (root / split).rglob("*.png")) == count


def test_without_resnet18_weights_it_stops_with_one_line_naming_the_offline_choices(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(SystemExit) as stopped:
        compare.prepare_weights("resnet18", "imagenet", tmp_path)
    message = str(stopped.value)
    assert message.startswith("error: ResNet-18's ImageNet weights could not be downloaded (no network)")
    assert "--model efficientnet_lite0" in message and "\n" not in message


@pytest.mark.slow
def test_compare_runs_the_tutorial_loop_and_tl_side_by_side_and_writes_the_table(tmp_path):
    data = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "result.json"
    arms = "tutorial/finetune,tl-fp32/finetune,tl-fast/frozen"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--data", str(data), "--weights", "random",
        "--epochs", "2", "--image-size", "32", "--workers", "0", "--only", arms, "--out", str(out),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(out.read_text())
    assert [r["arm"] for r in report["results"]] == arms.split(",")
    assert report["settings"]["epochs"] == 2 and report["settings"]["image_size"] == 32
    tutorial, fp32, fast = report["results"]
    for result in report["results"]:
        assert result["wall_s"] > 0 and result["peak_mb"] > 100 and 0 <= result["best_val_acc"] <= 1
        assert result["images_per_s"] == pytest.approx(12 * 2 / result["wall_s"])
    assert tutorial["epoch_s"] > 0 and fp32["epoch_time_ratio"] == pytest.approx(fp32["epoch_s"] / tutorial["epoch_s"])
    assert "speedup_wall" not in fast  # no tutorial/frozen run to compare with
    assert "| tl-fp32/finetune |" in finished.stdout and "32 px, batch 4, 2 epochs" in finished.stdout


def test_train_step_times_fp32_against_bf16_channels_last_in_pairs():
    command = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--image-size", "32", "--pairs", "3"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    machine, *lines = finished.stdout.splitlines()
    assert machine.startswith(cpu_model()) and f"torch {torch.__version__}" in machine  # which CPU it came from
    assert [line.split(":")[0] for line in lines] == ["training step", "evaluation"]
    for line in lines:
        assert re.search(r"fp32 \d+ ms, bf16 \+ channels_last \d+ ms .* median \d+\.\d\dx, quartiles", line), line
        assert "(batch 4, 32 px" in line


def _at(seconds: float) -> str:
    """A Hydra log timestamp `seconds` after 2026-11-29 13:50:00 (local time, as the parser reads it)."""
    return (datetime(2026, 11, 29, 13, 50) + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]


START = datetime(2026, 11, 29, 13, 50).timestamp()
FEATURES, TRAINER, TRACKER = "tl.training.features", "tl.training.trainer", "tl.tracking.tracker"  # loggers
WARNING = "/venv/torch/utils/data/dataloader.py:431: UserWarning: This DataLoader will create 4 worker processes"


def _frozen_log(first: bool) -> str:
    features = (
        [f"[{_at(5.0)}][{FEATURES}][INFO] - computing the backbone's features of 800 train and 200 val images",
         WARNING, f"[{_at(14.5)}][{FEATURES}][INFO] - cached 800 train and 200 val feature vectors of size 512",
         "2026/11/29 13:50:15 INFO mlflow.store.db.utils: Creating initial MLflow database tables..."]
        if first
        else [f"[{_at(4.75)}][{FEATURES}][INFO] - loaded 800 train and 200 val feature vectors from /c/f/0a.pt"]
    )  # fmt: skip
    checks = [f"[{_at(3.1)}][tl.data.manifest][INFO] - checking 1000 new or changed file(s) in /data",
              f"[{_at(4.6)}][tl.data.manifest][INFO] - checked 1000 file(s) in 1.5 s"] if first else []  # fmt: skip
    return "\n".join([
        f"[{_at(3.0)}][tl][INFO] - starting: config checked, libraries loaded", *checks, *features,
        f"[{_at(19.0)}][{TRACKER}][INFO] - MLflow run 0123abcd (+experiment=tutorial_frozen) in sqlite:///m.db",
        f"[{_at(19.5)}][{TRAINER}][INFO] - epoch 1/3  train loss 0.7 acc 0.5 | val loss 0.7 acc 0.5 | 0.2s, 400 img/s",
        f"[{_at(19.8)}][{TRAINER}][INFO] - epoch 2/3  train loss 0.6 acc 0.6 | val loss 0.6 acc 0.6 | 0.3s, 267 img/s",
        f"[{_at(20.1)}][{TRAINER}][INFO] - epoch 3/3  train loss 0.5 acc 0.7 | val loss 0.5 acc 0.7 | 0.3s, 267 img/s",
        f"[{_at(20.1)}][{TRAINER}][INFO] - best val acc 0.7000 at epoch 3; its weights are restored",
        f"[{_at(23.0)}][{TRACKER}][INFO] - run 0123abcd: best val acc 0.7000 (epoch 3); browse it with `mlflow ui`",
    ])  # fmt: skip


def test_a_first_frozen_runs_phases_run_from_one_log_line_to_the_next():
    measured = overhead.phases(overhead.parse_log(_frozen_log(first=True)), START, START + 24.0)
    expected = {"imports_s": 3.0, "data_set_up_s": 2.0, "features_s": 9.5, "run_start_s": 4.8, "epochs_s": 0.8,
                "wrap_up_s": 3.9, "whole_s": 24.0}  # fmt: skip
    assert measured == {**{key: pytest.approx(value, abs=1e-6) for key, value in expected.items()},
                        "features": "computed", "checked_files": 1000}  # fmt: skip
    phases = [measured[key] for key in expected if key != "whole_s"]
    assert sum(phases) == pytest.approx(measured["whole_s"])  # the phases cover the run, end to end


def test_a_repeat_runs_data_set_up_lasts_until_its_cached_features_are_loaded():
    measured = overhead.phases(overhead.parse_log(_frozen_log(first=False)), START, START + 24.0)
    assert measured["features"] == "loaded" and measured["features_s"] is None and measured["checked_files"] == 0
    assert measured["data_set_up_s"] == pytest.approx(1.75) and measured["run_start_s"] == pytest.approx(14.55)


def test_without_features_the_data_set_up_lasts_until_the_mlflow_run_starts():
    log = _frozen_log(first=False).replace(f"[{FEATURES}]", "[elsewhere]")
    measured = overhead.phases(overhead.parse_log(log), START, START + 24.0)
    assert measured["features"] is None and measured["data_set_up_s"] == pytest.approx(16.0)
    assert measured["run_start_s"] == pytest.approx(0.3)


def test_a_run_without_the_start_line_is_reported_not_guessed():
    log = "\n".join(line for line in _frozen_log(first=True).splitlines() if "starting:" not in line)
    with pytest.raises(ValueError, match="'starting:' line"):
        overhead.phases(overhead.parse_log(log), START, START + 24.0)


def test_the_tutorial_loops_first_epoch_is_taken_as_long_as_its_others():
    assert overhead.tutorial_phases([10.0, 12.0, 14.0], 0.0, 15.0) == {
        "before_epochs_s": 8.0, "epochs_s": 6.0, "wrap_up_s": 1.0, "whole_s": 15.0,
    }  # fmt: skip
    assert overhead.tutorial_phases([10.0], 0.0, 15.0) == {"whole_s": 15.0}


@pytest.mark.slow
def test_overhead_times_a_first_and_a_repeat_run_and_writes_the_table(tmp_path):
    out = tmp_path / "overhead.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--images", "24", "--epochs", "1",
        "--finetune-epochs", "0", "--no-tutorial-run", "--out", str(out),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(out.read_text())
    first, repeat = report["runs"]
    assert (first["features"], first["checked_files"]) == ("computed", 24)
    assert (repeat["features"], repeat["checked_files"]) == ("loaded", 0)  # the manifest and the features were found
    for run in report["runs"]:
        parts = [run[key] or 0 for key in ("imports_s", "data_set_up_s", "features_s", "run_start_s", "epochs_s",
                                           "wrap_up_s")]  # fmt: skip
        assert all(part >= 0 for part in parts) and sum(parts) == pytest.approx(run["whole_s"])
    assert report["tutorial_start"]["data_set_up_s"] > 0 and "tutorial_run" not in report
    assert set(report["bars"]) == {"data_set_up_repeat_s", "tutorial_to_first_batch_s",
                                   "data_set_up_minus_tutorial_s", "wrap_up_first_s", "wrap_up_repeat_s"}  # fmt: skip
    assert "| tl frozen, repeat (1 epoch) |" in finished.stdout and report["machine"]["cpu"] in finished.stdout


def test_the_serving_benchmark_counts_the_memory_of_every_process_of_the_tree():
    before, _ = serving.tree_memory(os.getpid())
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; x = bytearray(300 * 2**20); "
                               "print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)  # fmt: skip
    try:
        holder.stdout.readline()  # its 300 MiB are written
        total, largest = serving.tree_memory(os.getpid())
    finally:
        holder.kill()
        holder.wait()
    assert total - before > 250 * 2**20 and largest >= 300 * 2**20


time_to_accuracy = _benchmark_module("time_to_accuracy")
datasets = _benchmark_module("datasets")


@pytest.mark.parametrize("name", ["fashion", "glyphs", "shapes"])
def test_the_benchmark_datasets_are_made_alike_everywhere_with_the_asked_images_per_class(tmp_path, name):
    from PIL import Image

    first, again = (datasets.make(name, tmp_path / folder, train=3, val=2) for folder in ("a", "b"))
    for split, count in (("train", 3), ("val", 2)):
        classes = sorted((first / split).iterdir())
        assert len(classes) == 10 and all(len(list(c.iterdir())) == count for c in classes)
    images = sorted(first.rglob("*.png"))
    assert all(Image.open(path).size == Image.open(images[0]).size for path in images)
    assert [path.read_bytes() for path in images] == [path.read_bytes() for path in sorted(again.rglob("*.png"))]
    with pytest.raises(SystemExit, match="choose from fashion, glyphs, shapes"):
        datasets.make("photos", tmp_path / "c", 1, 1)


def test_each_arm_is_summed_up_by_its_mean_and_t_interval_and_judged_against_the_better_tutorial_scenario():
    def runs(*pairs):
        return [{"seed": seed, "best_val_acc": acc, "wall_s": wall} for seed, (acc, wall) in enumerate(pairs)]

    summary = time_to_accuracy.summarise({
        "tutorial/finetune": runs((0.90, 500), (0.92, 520), (0.94, 480)),
        "tutorial/frozen": runs((0.60, 150), (0.62, 150), (0.64, 150)),
        "tl/default": runs((0.91, 40), (0.92, 45), (0.93, 50)),  # 0.92 >= 0.92 - 0.01, 45 s <= 50 s
        "tl/slow": runs((0.95, 60), (0.95, 60), (0.95, 60)),  # more than a tenth of 500 s
        "tl/weak": runs((0.90, 10), (0.90, 10), (0.90, 10)),  # below 0.91
    })  # fmt: skip
    finetune = summary["tutorial/finetune"]
    assert finetune["best_val_acc"] == pytest.approx(0.92) and finetune["wall_s"] == pytest.approx(500)
    half = 4.302653 * 0.02 / 3**0.5  # Student's t at 97.5% with 2 degrees of freedom, times the standard error
    assert finetune["interval"] == pytest.approx([0.92 - half, 0.92 + half], abs=1e-6)
    assert summary["bar"] == {"best_val_acc_at_least": pytest.approx(0.91), "wall_s_at_most": pytest.approx(50)}
    assert [summary[arm]["meets_bar"] for arm in ("tl/default", "tl/slow", "tl/weak")] == [True, False, False]


@pytest.mark.slow
def test_time_to_accuracy_runs_the_tutorial_loop_and_tl_on_a_made_dataset_and_writes_json_and_figure(tmp_path):
    out = tmp_path / "result.json"
    arms = "tutorial/finetune,tutorial/frozen,tl/default"
    command = [sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--smoke", "--datasets", "glyphs",
               "--seeds", "0", "--arms", arms, "--out", str(out)]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(out.read_text())
    glyphs = report["datasets"]["glyphs"]
    assert list(glyphs) == [*arms.split(","), "bar"]
    for arm in arms.split(","):
        (run,) = glyphs[arm]["runs"]
        assert run["seed"] == 0 and run["wall_s"] > 1 and 0 <= run["best_val_acc"] <= 1
        assert glyphs[arm]["interval"] is None  # one seed: no interval
    assert glyphs["bar"]["wall_s_at_most"] == pytest.approx(glyphs["tutorial/finetune"]["wall_s"] / 10)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "glyphs   tl/default" in finished.stdout


pruning = _benchmark_module("pruning")


def test_the_pruning_bar_is_half_the_time_and_the_best_inside_the_unpruned_best_interval():
    unpruned = {"wall_s": 100.0, "best_val_acc": 0.90, "interval": [0.85, 0.94]}
    assert pruning.verdict({"wall_s": 50.0, "best_val_acc": 0.86}, unpruned) == {
        "time_ratio": 0.5, "at_most_half_the_time": True, "best_within_interval": True}  # fmt: skip
    slow_and_worse = pruning.verdict({"wall_s": 60.0, "best_val_acc": 0.80}, unpruned)
    assert not slow_and_worse["at_most_half_the_time"] and not slow_and_worse["best_within_interval"]


@pytest.mark.slow
def test_the_pruning_benchmark_runs_both_searches_on_a_made_dataset_and_writes_json(tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "pruning.py"), "--smoke", "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(out.read_text())
    for search in report["searches"].values():
        assert search["trials"] == 2 and search["wall_s"] > 1 and 0 <= search["best_val_acc"] <= 1
        assert search["interval"][0] <= search["best_val_acc"] <= search["interval"][1]
    assert report["bar"]["time_ratio"] > 0
