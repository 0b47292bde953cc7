"""benchmarks/: that the scripts run and report what they measured (their figures are not checked here)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, make_image_folder


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _compare_module()


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
    lines = finished.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["training step", "evaluation"]
    for line in lines:
        assert re.search(r"fp32 \d+ ms, bf16 \+ channels_last \d+ ms .* median \d+\.\d\dx, quartiles", line), line
        assert "(batch 4, 32 px" in line
