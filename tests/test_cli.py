"""End-to-end: `python run.py` as a user runs it, against a temporary MLflow store."""

from __future__ import annotations

import csv
import io
import re
import secrets
import shutil
import statistics
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.helpers import ROOT, assert_same_numbers, make_image_folder, run_cli, runs, tiny
from tests.servers import start_mlflow_server
from tl.evaluation import reports
from tl.evaluation.uncertainty import paired_t_test

pytestmark = pytest.mark.slow


# The tests that read frozen_run run on one pytest-xdist worker (make test runs two), which trains it once.
ON_FROZEN_RUNS_WORKER = pytest.mark.xdist_group("frozen_run")


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, str, Path]:
    """One small `strategy=frozen` run (2 epochs, a truncated and a CMYK image among the training images),
    checked by several tests: (the finished process, its working folder, its store, its image folder)."""
    tmp_path = tmp_path_factory.mktemp("frozen_run")
    image_folder = make_image_folder(tmp_path / "data")
    good = (image_folder / "train" / "ants" / "0.png").read_bytes()
    (image_folder / "train" / "ants" / "broken.png").write_bytes(good[: len(good) // 2])  # skipped, listed
    Image.new("CMYK", (40, 40), (10, 200, 30, 0)).save(image_folder / "train" / "bees" / "cmyk.jpg")  # converted
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(*tiny(image_folder), "epochs=2", "strategy=frozen", cwd=tmp_path, mlflow_uri=mlflow_uri)
    return result, tmp_path, mlflow_uri, image_folder


@pytest.fixture
def frozen_run_store(frozen_run, monkeypatch):
    """The frozen run's store as this process's MLflow store, for the test's duration."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", frozen_run[2])
    mlflow.set_tracking_uri(frozen_run[2])
    yield frozen_run[2]
    mlflow.set_tracking_uri(None)


@ON_FROZEN_RUNS_WORKER
def test_run_logs_params_per_epoch_metrics_checkpoint_and_a_loadable_model(frozen_run, frozen_run_store):
    result, tmp_path, mlflow_uri, image_folder = frozen_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping 1 unreadable image(s)" in result.stderr and "train/ants/broken.png (truncated)" in result.stderr
    (run,) = runs(mlflow_uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == ",".join([*tiny(image_folder), "epochs=2", "strategy=frozen"])
    params = run.data.params
    assert params["strategy"] == "frozen" and params["model"] == "efficientnet_lite0" and params["lr"] == "0.001"
    assert params["data.root"] == str(image_folder) and params["optimizer.weight_decay"] == "0.01"  # AdamW's
    assert "epochs=2" in run.data.tags["tl.overrides"]
    tags = run.data.tags
    assert tags["tl.env.torch"] == torch.__version__ and tags["tl.env.device"] == "cpu" and tags["tl.env.cpu"]
    assert tags["tl.dataset_counts.train"] == "ants=6 bees=7 wasps=6" and len(tags["tl.dataset_sha256"]) == 64
    (images,) = run.inputs.dataset_inputs  # the UI's "Dataset" column
    assert (images.dataset.name, images.dataset.digest) == ("data", tags["tl.dataset_sha256"][:32])
    accuracy = run.data.metrics["best_val_acc"]
    assert accuracy == round(accuracy * 9) / 9  # 9 validation images: exactly k/9, as MLflow's UI shows it
    assert run.data.metrics["data_skipped_images"] == 1
    assert len(tags["tl.weights_sha256"]) == 64 and "efficientnet-lite0" in tags["tl.weights"]
    if (ROOT / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["tl.git_dirty"] in ("true", "false")
    client = MlflowClient(mlflow_uri)
    for metric in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    assert 0.0 <= run.data.metrics["best_val_acc"] <= 1.0

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "config"} <= artifacts
    checkpoint_path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints/best.pt")
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["classes"] == ["ants", "bees", "wasps"] and checkpoint["preprocess"]["input_size"] == 32
    config_files = {a.path for a in client.list_artifacts(run.info.run_id, "config/hydra")}
    assert {"config/hydra/config.yaml", "config/hydra/overrides.yaml"} <= config_files

    evaluation_files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    pngs = {f"evaluation/{name}.png" for name in ("confusion_matrix", "curves", "worst_misclassified")}
    assert pngs | {"evaluation/per_class.csv"} <= evaluation_files
    for png in pngs:
        assert logged_pixels(run.info.run_id, png).std() > 5, png  # opens, and is not blank
    # The curves are the run's own metric histories: drawn again from them, the figure is the same.
    history = [dict(zip(CURVE_KEYS, values, strict=True)) for values in zip(*metric_histories(run.info.run_id,
               CURVE_KEYS).values(), strict=True)]  # fmt: skip
    assert_same_figure(logged_pixels(run.info.run_id, "evaluation/curves.png"), reports.plot_curves(history))
    table = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/per_class.csv").splitlines()
    assert table[0] == "class,precision,recall,f1,support" and len(table) == 4
    assert {"macro_precision", "macro_recall", "macro_f1"} <= run.data.metrics.keys()

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 3)  # a batch size other than the example's
    assert list((tmp_path / "outputs" / "runs").glob("*/*/run.log"))  # Hydra's run folder under outputs/


def not_tls(output: str) -> list[str]:
    """The lines of a command's output that are not tl's log lines (or Hydra's, in a sweep)."""
    return [line for line in output.splitlines() if not re.match(r"\[[\d :,-]+\]\[(tl[.\]]|HYDRA\])", line)]


@ON_FROZEN_RUNS_WORKER
def test_a_run_prints_only_tls_lines_and_keeps_other_libraries_lines_in_its_log_file(frozen_run):
    result, tmp_path, _, _ = frozen_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert not_tls(result.stderr + result.stdout) == []  # a new store, a skipped image: still only tl's lines
    (log_file,) = (tmp_path / "outputs" / "runs").glob("*/*/run.log")
    assert "[mlflow.tracking.fluent][INFO] - Experiment with name 'tl' does not exist" in log_file.read_text()


def test_sweep_is_one_parent_with_a_finished_child_per_job(tmp_path, image_folder, mlflow_uri):
    sweep = ["-m", "strategy=finetune,frozen", "lr=1e-3,1e-2", "epochs=1"]
    result = run_cli(*sweep, *tiny(image_folder), cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not_tls(result.stderr + result.stdout) == []
    all_runs = runs(mlflow_uri)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4 and len(all_runs) == 5
    assert all(child.info.status == "FINISHED" for child in children)
    names = {child.info.run_name for child in children}
    assert names == {f"strategy={s},lr={lr}" for s in ("finetune", "frozen") for lr in ("0.001", "0.01")}
    assert {(c.data.params["strategy"], c.data.params["lr"]) for c in children} == {
        (s, lr) for s in ("finetune", "frozen") for lr in ("0.001", "0.01")
    }

    parent = MlflowClient().get_run(parents[0].info.run_id)  # re-read: tagged when the sweep ended
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.csv").splitlines()
    assert summary[0].startswith("run_name,run_id,status,best_val_acc,seconds") and len(summary) == 5
    best = next(c for c in children if c.info.run_id == parent.data.tags["tl.best_child_run_id"])
    assert best.data.metrics["best_val_acc"] == max(c.data.metrics["best_val_acc"] for c in children)
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["best_val_acc"]
    assert parent.data.tags["tl.best_child"] == best.info.run_name
    tagged = [c for c in children if MlflowClient().get_run(c.info.run_id).data.tags.get("tl.best_in_sweep")]
    assert [c.info.run_id for c in tagged] == [best.info.run_id]
    # The comparison plot is the configurations' accuracies: drawn again from the CSV, the figure is the same.
    rows = configuration_rows(parent.info.run_id)
    assert len(rows) == 4 and all(row["test"].startswith("McNemar exact, 9 paired images") for row in rows[1:])
    assert_same_figure(logged_pixels(parent.info.run_id, "sweep/comparison.png"), reports.plot_sweep(rows))


def test_monitor_val_loss_picks_the_epoch_and_the_sweep_job_of_lowest_validation_loss(
    tmp_path, image_folder, mlflow_uri
):
    sweep = ["-m", "lr=1e-3,3e-2", "epochs=3", "strategy=frozen", "monitor=val_loss", "mode=min"]
    result = run_cli(*sweep, *tiny(image_folder), cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    parent = next(r for r in runs(mlflow_uri) if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs(mlflow_uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for child in children:  # each run keeps the epoch of lowest validation loss
        losses = metric_histories(child.info.run_id, ("val_loss",))["val_loss"]
        assert len(losses) == 3 and child.data.metrics["best_val_loss"] == min(losses)
        assert child.data.metrics["best_epoch"] == losses.index(min(losses)) + 1
    best = next(c for c in children if c.info.run_id == parent.data.tags["tl.best_child_run_id"])
    assert best.data.metrics["best_val_loss"] == min(c.data.metrics["best_val_loss"] for c in children)
    assert parent.data.tags["tl.best_by"] == "val_loss (min)"
    assert parent.data.metrics["best_val_loss"] == best.data.metrics["best_val_loss"]
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.csv").splitlines()
    assert summary[0].startswith("run_name,run_id,status,best_val_loss,best_val_acc,seconds")
    assert summary[1].split(",")[1] == best.info.run_id  # best first
    assert "best val_loss" in result.stderr and "run " in result.stderr


def sweep_runs(mlflow_uri: str):
    """The sweep's parent run (re-read: tagged when the sweep ended) and its children."""
    parent = next(r for r in runs(mlflow_uri) if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs(mlflow_uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return MlflowClient().get_run(parent.info.run_id), children


def configuration_rows(parent_run_id: str) -> list[dict]:
    """sweep/configurations.csv, with its numbers and flags typed back."""
    text = mlflow.artifacts.load_text(f"runs:/{parent_run_id}/sweep/configurations.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for key, value in row.items():
            if key in ("configuration", "test", "run_ids"):
                continue
            row[key] = None if value == "" else value == "True" if value in ("True", "False") else float(value)
        row["n"] = int(row["n"])
    return rows


def test_a_sweep_over_seeds_gives_each_strategy_its_mean_spread_and_a_test_against_the_best(
    tmp_path, image_folder, mlflow_uri
):
    sweep = ["-m", "strategy=finetune,frozen", "seed=0,1,2", "epochs=1"]
    result = run_cli(*sweep, *tiny(image_folder), cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(mlflow_uri)
    assert len(children) == 6
    accuracy = {(c.data.params["strategy"], c.data.params["seed"]): c.data.metrics["best_val_acc"] for c in children}
    rows = configuration_rows(parent.info.run_id)
    assert sorted(row["configuration"] for row in rows) == ["strategy=finetune", "strategy=frozen"]
    for row in rows:
        values = [accuracy[(row["configuration"].split("=")[1], str(seed))] for seed in range(3)]
        assert row["n"] == 3 and row["mean_best_val_acc"] == pytest.approx(statistics.mean(values))
        assert row["std_best_val_acc"] == pytest.approx(statistics.stdev(values))
    best, other = rows
    assert best["mean_best_val_acc"] >= other["mean_best_val_acc"] and best["p_value_vs_best"] is None
    best_values, other_values = ([accuracy[(r["configuration"].split("=")[1], str(s))] for s in range(3)]
                                 for r in (best, other))  # fmt: skip
    if best_values != other_values:
        assert other["p_value_vs_best"] == pytest.approx(paired_t_test(other_values, best_values))
    assert other["test"] == "paired t-test, 3 matched repeats"
    assert parent.data.tags["tl.best_configuration"] == best["configuration"]
    tied = parent.data.tags["tl.indistinguishable_from_best"]
    assert tied.startswith(other["configuration"]) if other["indistinguishable_from_best"] else tied == "none"
    # Each run's own interval, from its best weights' predictions, which it also lists image by image.
    for child in children:
        low, high = child.data.metrics["best_val_acc_ci_low"], child.data.metrics["best_val_acc_ci_high"]
        assert 0 <= low <= child.data.metrics["best_val_acc"] <= high <= 1 and high - low > 0.1
        listed = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/evaluation/val_predictions.csv")
        assert len(listed.splitlines()) == 1 + 9  # the header, then each of the 9 validation images
    # The comparison plot is drawn from the CSV: bars with error bars, the same figure again.
    assert_same_figure(logged_pixels(parent.info.run_id, "sweep/comparison.png"), reports.plot_sweep(rows))
    assert "95% interval" in result.stderr


def test_cross_validation_folds_are_disjoint_stratified_and_cover_every_image_once(tmp_path, image_folder, mlflow_uri):
    sweep = ["-m", "data.folds=5", "data.fold=0,1,2,3,4", "epochs=1", "strategy=frozen"]
    result = run_cli(*sweep, *tiny(image_folder), cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(mlflow_uri)
    assert sorted(c.data.params["data.fold"] for c in children) == ["0", "1", "2", "3", "4"]
    folds = []
    for child in children:
        listed = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/evaluation/val_predictions.csv")
        folds.append([row["path"] for row in csv.DictReader(io.StringIO(listed))])
    every_image = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    assert sorted(path for fold in folds for path in fold) == every_image  # disjoint, and each image once
    for name in ("ants", "bees", "wasps"):  # 9 images of each class over 5 folds: 1 or 2 in each
        assert {sum(path.split("/")[1] == name for path in fold) for fold in folds} <= {1, 2}
    (row,) = configuration_rows(parent.info.run_id)  # the folds are repeats of one configuration
    assert row["configuration"] == "defaults" and row["n"] == 5 and row["std_best_val_acc"] is not None


CURVE_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


def metric_histories(run_id: str, keys: tuple[str, ...] = (*CURVE_KEYS, "lr")) -> dict[str, list[float]]:
    client = MlflowClient()
    return {key: [m.value for m in client.get_metric_history(run_id, key)] for key in keys}


def logged_pixels(run_id: str, path: str) -> np.ndarray:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    return np.asarray(Image.open(local).convert("L"), dtype=float)


def assert_same_figure(logged: np.ndarray, expected_figure) -> None:
    """The logged PNG shows what `expected_figure` draws (and differs from a blank canvas)."""
    buffer = io.BytesIO()
    expected_figure.savefig(buffer, format="png")
    expected = np.asarray(Image.open(buffer).convert("L"), dtype=float)
    assert logged.shape == expected.shape and np.abs(logged - expected).mean() < 0.5
    assert np.abs(logged - 255).mean() > 5  # not blank


def test_rerun_repeats_the_original_exactly_from_its_recorded_config(tmp_path, image_folder, mlflow_uri):
    # A copy of the project whose conf/ defaults can be changed between the run and the rerun.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "run.py", project)
    shutil.copytree(ROOT / "conf", project / "conf")
    shutil.copytree(ROOT / "experiments", project / "experiments")
    first = run_cli(*tiny(image_folder), "epochs=2", cwd=tmp_path, mlflow_uri=mlflow_uri, project=project)
    assert first.returncode == 0, first.stderr[-3000:]
    (original,) = runs(mlflow_uri)

    adamw = project / "conf" / "optimizer" / "adamw.yaml"  # the default optimizer's settings change
    adamw.write_text(adamw.read_text().replace("weight_decay: 0.01", "weight_decay: 0.5"))
    config = project / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("lr: 1e-3", "lr: 0.05").replace("seed: 0", "seed: 7"))
    again = run_cli(f"rerun={original.info.run_id}", cwd=tmp_path, mlflow_uri=mlflow_uri, project=project)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "differs" not in again.stderr
    rerun = next(r for r in runs(mlflow_uri) if r.info.run_id != original.info.run_id)
    assert rerun.data.tags["tl.rerun_of"] == original.info.run_id
    for key in ("lr", "seed", "optimizer.weight_decay", "data.root", "strategy", "model"):
        assert rerun.data.params[key] == original.data.params[key], key
    assert_same_numbers(metric_histories(rerun.info.run_id), metric_histories(original.info.run_id))

    shutil.copy(image_folder / "train" / "ants" / "0.png", image_folder / "train" / "ants" / "extra.png")
    changed = run_cli(f"rerun={original.info.run_id}", "epochs=1", cwd=tmp_path, mlflow_uri=mlflow_uri, project=project)
    assert changed.returncode == 0, changed.stderr[-3000:]
    warnings = [line for line in changed.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "dataset: 1 file(s) differ: + train/ants/extra.png" in warnings[0]


def test_default_run_reaches_the_promised_accuracy_and_predicts_unseen_images_alike(tmp_path, mlflow_uri):
    """The README's main command, unchanged, then predict.py on Fashion-MNIST test-split images."""
    result = run_cli(cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(mlflow_uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "defaults"
    val_acc = run.data.metrics["best_val_acc"]
    assert val_acc >= 0.75
    evaluation = {
        a.path.removeprefix("evaluation/") for a in MlflowClient().list_artifacts(run.info.run_id, "evaluation")
    }
    assert evaluation == {"confusion_matrix.png", "per_class.csv", "curves.png", "worst_misclassified.png",
                          "val_predictions.csv"}  # fmt: skip
    low, high = run.data.metrics["best_val_acc_ci_low"], run.data.metrics["best_val_acc_ci_high"]
    assert low < val_acc < high and high - low < 0.1  # 400 validation images: about +-4 points

    output = tmp_path / "predictions.csv"
    unseen = ROOT / "tests" / "data" / "fashion_unseen"
    args = [f"model_uri=runs:/{run.info.run_id}/model", f"input={unseen}", f"output={output}"]
    predicted = run_cli(*args, cwd=tmp_path, mlflow_uri=mlflow_uri, script="predict.py")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 200 and not any(row["error"] for row in rows)
    accuracy = sum(row["prediction"] == row["label"] for row in rows) / len(rows)
    assert abs(accuracy - val_acc) <= 0.1, (accuracy, val_acc)
    assert f"accuracy {accuracy:.4f}" in predicted.stderr


@ON_FROZEN_RUNS_WORKER
def test_predict_cli_reports_unreadable_files_and_exits_zero(tmp_path, frozen_run):
    trained, _, mlflow_uri, image_folder = frozen_run
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = runs(mlflow_uri)
    folder = shutil.copytree(image_folder / "val", tmp_path / "val")
    (folder / "ants" / "notes.txt").write_text("not an image")
    (folder / "bees" / "empty.png").write_bytes(b"")
    (folder / "wasps" / "truncated.png").write_bytes((folder / "wasps" / "0.png").read_bytes()[:200])
    result = run_cli(f"model_uri=runs:/{run.info.run_id}/model", f"input={folder}", cwd=tmp_path,
                     mlflow_uri=mlflow_uri, script="predict.py")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicted 9 image(s), 3 unreadable" in result.stderr
    (output,) = (tmp_path / "outputs" / "predictions").glob("*/*/predictions.csv")  # the Hydra run folder
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 12 and sum(bool(row["error"]) for row in rows) == 3
    assert all(row["prediction"] for row in rows if not row["error"])


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port, serving artifacts itself."""
    server, url = start_mlflow_server(tmp_path)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_training_registry_and_prediction_against_a_real_tracking_server(tmp_path, image_folder, mlflow_server):
    result = run_cli(*tiny(image_folder), "epochs=1", f"tracking.uri={mlflow_server}", "tracking.register=ants",
                     "tracking.alias=champion", cwd=tmp_path, mlflow_uri=mlflow_server)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(mlflow_server)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((tmp_path / "server_artifacts").rglob("best.pt"))  # stored by the server, not by the client
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    output = tmp_path / "p.csv"
    args = ["model_uri=models:/ants@champion", f"input={image_folder / 'val'}", f"output={output}"]
    predicted = run_cli(
        *args, f"tracking_uri={mlflow_server}", cwd=tmp_path, mlflow_uri=mlflow_server, script="predict.py"
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(list(csv.DictReader(output.open()))) == 9


@pytest.fixture
def login_server(tmp_path):
    """`mlflow server --app-name basic-auth` on a free loopback port: (its URL, the admin's password)."""
    password = f"pw-{secrets.token_hex(12)}"
    env = {"MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    server, url = start_mlflow_server(tmp_path, extra=("--app-name", "basic-auth"), env=env)
    try:
        yield url, password
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_server_with_logins_takes_runs_sweeps_and_predictions_with_the_right_password_only(
    tmp_path, image_folder, login_server, monkeypatch, request
):
    url, password = login_server
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    outputs = []

    def tl(*args: str, env: dict[str, str], script: str = "run.py") -> subprocess.CompletedProcess:
        result = run_cli(*args, cwd=tmp_path, mlflow_uri=url, env=env, script=script)
        outputs.append(result.stdout + result.stderr)
        return result

    sweep = tl("-m", "lr=1e-3,1e-2", *tiny(image_folder), "epochs=1", "strategy=frozen", "tracking.register=ants",
               "tracking.alias=champion", env=login)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    image = next((image_folder / "val" / "ants").iterdir())
    predicted = tl("model_uri=models:/ants@champion", f"input={image}", env=login, script="predict.py")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    for wrong, reason in (({**login, "MLFLOW_TRACKING_PASSWORD": "wrong"}, "the credentials of user admin"),
                          ({}, "a request without credentials")):  # fmt: skip
        refused = tl(*tiny(image_folder), "epochs=1", env=wrong)
        assert refused.returncode == 1
        (line,) = [line for line in refused.stderr.splitlines() if "error:" in line]
        assert f"the MLflow tracking server {url} refused {reason} (HTTP 401)" in line
        assert "starting" in refused.stderr and "epoch 1/1" not in refused.stderr  # stopped before training
    refused = tl("-m", "lr=1e-3,1e-2", *tiny(image_folder), "epochs=1", env={})  # a sweep: before any job
    assert refused.returncode == 1 and "refused a request without credentials" in refused.stderr
    assert "#0 :" not in refused.stdout
    in_uri = url.replace("http://", f"http://admin:{password}@")
    for args, script in (
        (tiny(image_folder), "run.py"),
        (["model_uri=models:/ants/1", f"input={image}"], "predict.py"),
    ):
        refused = tl(*args, env={"MLFLOW_TRACKING_URI": in_uri}, script=script)
        assert refused.returncode == 1 and "has a password in it" in refused.stderr, script

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    mlflow.set_tracking_uri(url)  # for the registry's models:/ URIs too
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    client = MlflowClient(url)
    logged = client.search_runs([client.get_experiment_by_name("tl").experiment_id])
    assert len(logged) == 3 and {r.info.status for r in logged} == {"FINISHED"}  # a parent, two jobs; none RUNNING
    children = [r for r in logged if "mlflow.parentRunId" in r.data.tags]
    assert all("best_val_acc" in r.data.metrics and r.data.params["strategy"] == "frozen" for r in children)
    assert client.get_model_version_by_alias("ants", "champion").run_id in {r.info.run_id for r in children}
    # The password is nowhere: not in any output, tag, param or artifact.
    assert not [text for text in outputs if password in text]
    downloaded = tmp_path / "downloaded"
    for run in logged:
        assert password not in str(run.data.tags) + str(run.data.params)
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(downloaded / run.info.run_id))
    for version in client.search_model_versions("name='ants'"):  # the logged models, stored beside the runs
        assert password not in str(version.tags)
        mlflow.artifacts.download_artifacts(
            f"models:/ants/{version.version}", dst_path=str(downloaded / version.version)
        )
    assert len(list(downloaded.rglob("MLmodel"))) == 2 and len(list(downloaded.rglob("val_predictions.csv"))) == 2
    assert not [f for f in downloaded.rglob("*") if f.is_file() and password.encode() in f.read_bytes()]


def test_parallel_optuna_sweep_reports_every_trial_and_points_the_alias_at_the_best(tmp_path, image_folder, mlflow_uri):
    # Two trials at a time: Optuna asks for two, the joblib launcher runs them in two processes.
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "epochs=1", "tracking.register=ants",
            "tracking.alias=champion", *tiny(image_folder)]  # fmt: skip
    result = run_cli(*args, cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # Hydra's own log
    all_runs = runs(mlflow_uri)
    (parent,) = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.info.run_name.startswith("lr=") and ",strategy=" in c.info.run_name for c in children)
    assert all("best_val_acc" in c.data.metrics for c in children)
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.csv").splitlines()
    assert len(summary) == 3
    champion = MlflowClient().get_model_version_by_alias("ants", "champion")
    assert champion.run_id == parent.data.tags["tl.best_child_run_id"]
