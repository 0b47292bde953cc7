"""Runs recorded before tl/ became layered packages still rerun and resume: their configs name the old
modules (`tl.models.efficientnet_lite0`), kept as logged in tests/data/recorded_run/."""

from __future__ import annotations

import signal
from pathlib import Path

import mlflow
import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import ROOT, assert_same_numbers, make_image_folder, run_cli, runs, tiny
from tests.test_reliability import histories, start_training, wait_for
from tl.training import checkpoints
from tl.training.checkpoints import Checkpoint

RECORDED = ROOT / "tests" / "data" / "recorded_run"
# The recorded run's choices where today's defaults differ (choices.yaml): today's run of the same config.
RECORDED_RECIPE = ("strategy=finetune", "optimizer=sgd", "scheduler=step")


def recorded_config(data_root: Path, epochs: int) -> dict:
    """The recorded config with this machine's data folder and a run length: plain values a run may differ in."""
    config = yaml.safe_load((RECORDED / "config.yaml").read_text())
    assert config["model"]["_target_"] == "tl.models.efficientnet_lite0"  # still the old layout's names
    config["data"]["root"], config["epochs"] = str(data_root), epochs
    return config


@pytest.mark.slow
def test_a_run_recorded_before_the_move_reruns_to_the_same_metrics_as_its_config_run_today(
    tmp_path, image_folder, mlflow_uri
):
    mlflow.set_experiment("tl")
    with mlflow.start_run() as recorded:  # the artifacts as that run logged them
        mlflow.log_text(yaml.safe_dump(recorded_config(image_folder, 2)), "config/config.yaml")
        mlflow.log_text((RECORDED / "choices.yaml").read_text(), "config/choices.yaml")
    rerun = run_cli(f"rerun={recorded.info.run_id}", "trainer.progress=false", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    today = run_cli(*tiny(image_folder), "epochs=2", *RECORDED_RECIPE, "trainer.progress=false", cwd=tmp_path,
                    mlflow_uri=mlflow_uri)  # fmt: skip
    assert today.returncode == 0, today.stderr[-3000:]

    by_tag = {r.data.tags.get("tl.rerun_of"): r for r in runs(mlflow_uri) if r.info.run_id != recorded.info.run_id}
    again, fresh = by_tag[recorded.info.run_id], by_tag[None]
    assert again.info.status == "FINISHED" and again.data.params["model"] == "efficientnet_lite0"
    values = {run.info.run_id: {key: [v for _, v in history] for key, history in histories(run.info.run_id).items()}
              for run in (again, fresh)}  # fmt: skip
    assert_same_numbers(values[again.info.run_id], values[fresh.info.run_id])


@pytest.mark.slow
def test_a_checkpoint_whose_config_names_the_old_modules_resumes_to_the_end(tmp_path, mlflow_uri):
    data, epochs = make_image_folder(tmp_path / "data", {"train": 30, "val": 6}), 3
    run_dir, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.pt"
    process = start_training(tmp_path, data, mlflow_uri, run_dir, epochs=epochs, extra=RECORDED_RECIPE)
    wait_for(checkpoint, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = checkpoints.load(checkpoint)
    assert state.epochs_done < epochs
    old = OmegaConf.to_yaml(recorded_config(data, epochs))  # the same run, as the old layout recorded it
    Checkpoint(checkpoint, {"run_id": state.run_id, "config": old, "choices": state.choices}).save(state)

    resumed = run_cli(f"resume={run_dir}", "trainer.progress=false", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {state.epochs_done}/{epochs}" in resumed.stderr
    (run,) = runs(mlflow_uri)
    assert run.info.status == "FINISHED" and [s for s, _ in histories(run.info.run_id)["val_acc"]] == [1, 2, 3]
