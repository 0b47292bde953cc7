"""End-to-end reliability: bad input gets one line, crashes lose nothing, sweeps survive their failures."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, assert_same_numbers, make_image_folder, run_cli, runs, tiny, user_env
from tl.training import checkpoints

pytestmark = pytest.mark.slow


def layout(name: str, root: Path) -> Path:
    """A broken dataset, by name."""
    data = make_image_folder(root / "data", {"train": 4, "val": 2})
    if name == "no_val":
        shutil.rmtree(data / "val")
    elif name == "empty_class":
        for image in (data / "val" / "bees").iterdir():
            image.unlink()
    elif name == "different_classes":
        shutil.rmtree(data / "val" / "wasps")
    elif name == "one_class":
        for split in ("train", "val"):
            shutil.rmtree(data / split / "bees"), shutil.rmtree(data / split / "wasps")
    elif name == "truncated_image":
        good = (data / "train" / "ants" / "0.png").read_bytes()
        (data / "train" / "ants" / "broken.png").write_bytes(good[: len(good) // 2])
    return data


# (name, arguments, dataset layout or None, what the one error line must say)
BAD_INPUTS = [
    ("negative lr", ["lr=-1"], None, "lr=-1 is not allowed: lr must be a number > 0"),
    ("lr not a number", ["lr=abc"], None, "lr='abc' is not allowed"),
    ("zero epochs", ["epochs=0"], None, "epochs=0 is not allowed: epochs must be a whole number >= 1"),
    ("zero batch size", ["batch_size=0"], None, "batch_size=0 is not allowed"),
    ("unknown precision", ["trainer.precision=fp8"], None, "trainer.precision='fp8' is not allowed"),
    ("missing root", ["data=image_folder", "data.root=/nonexistent/tl"], None, "/nonexistent/tl does not exist"),
    ("no val folder", [], "no_val", "val is missing; data.root needs train/ and val/"),
    ("empty class folder", [], "empty_class", "class folder(s) bees hold no images"),
    ("different classes", [], "different_classes", "train/ and val/ in"),
    ("one class", [], "one_class", "has 1 class folders; a classifier needs at least 2"),
    ("unreadable image", ["data.on_bad_image=error"], "truncated_image", "broken.png"),
    ("no such checkpoint", ["resume=/nonexistent/last.pt"], None, "not a checkpoint file, a run's output folder"),
    ("server down", ["tracking.uri=http://127.0.0.1:9"], None, "http://127.0.0.1:9 does not answer"),
    # SGD: AdamW's steps do not grow with lr enough to overflow the loss; StepLR: the lr in the message is the
    # one set (one cycle would be warming up to it)
    (
        "loss explodes",
        ["lr=1e12", "epochs=3", "optimizer=sgd", "scheduler=step"],
        "good",
        "(lr=1e+12); lower lr or check the data",
    ),
]

# The inputs that can only be found once training has begun; every other one is found before any work.
STOPS_AFTER_TRAINING_STARTED = {"loss explodes"}


# The tests that read bad_input_results run on one pytest-xdist worker (make test runs two), which runs them once.
ON_BAD_INPUTS_WORKER = pytest.mark.xdist_group("bad_inputs")


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, str]]:
    """Every bad input run at once, two at a time (each is mostly interpreter start-up)."""

    def run_one(case):
        name, args, broken, _ = case
        cwd = tmp_path_factory.mktemp(name.replace(" ", "_"))
        uri = f"sqlite:///{cwd / 'mlflow.db'}"
        if broken:
            args = [*tiny(layout(broken, cwd)), *args]
        return name, (run_cli(*args, "trainer.progress=false", cwd=cwd, mlflow_uri=uri), cwd, uri)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run_one, BAD_INPUTS))


@pytest.mark.parametrize(
    ("name", "message"), [(case[0], case[3]) for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
@ON_BAD_INPUTS_WORKER
def test_bad_input_is_one_line_no_traceback_nothing_half_written_no_run_left_running(bad_input_results, name, message):
    result, cwd, uri = bad_input_results[name]
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(cwd.rglob("*.partial"))
    started = runs(uri) if (cwd / "mlflow.db").exists() else []
    saved = list(cwd.rglob("checkpoints/*"))
    if name in STOPS_AFTER_TRAINING_STARTED:  # one run, ended FAILED; its checkpoint whole and loadable
        assert [run.info.status for run in started] == ["FAILED"]
        assert len(saved) == 1 and checkpoints.load(saved[0]).epochs_done >= 1
    else:  # stopped before any work: no MLflow run was begun, no checkpoint written
        assert started == [] and saved == []


def test_unknown_group_option_keeps_hydras_list_of_options(tmp_path, mlflow_uri):
    result = run_cli("model=nope", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Could not find 'model/nope'" in result.stderr and "efficientnet_lite0" in result.stderr


@ON_BAD_INPUTS_WORKER
def test_a_failed_run_says_why_on_the_mlflow_run(bad_input_results):
    _, _, uri = bad_input_results["loss explodes"]
    (run,) = runs(uri)
    assert run.info.status == "FAILED" and "(lr=1e+12); lower lr" in run.data.tags["tl.error"]


def start_training(
    tmp_path: Path,
    data: Path,
    mlflow_uri: str,
    run_dir: Path,
    epochs: int = 4,
    resume: Path | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen:
    args = [f"resume={resume}"] if resume else [*tiny(data), f"epochs={epochs}", f"hydra.run.dir={run_dir}", *extra]
    command = [sys.executable, str(ROOT / "run.py"), *args, "trainer.progress=false"]
    return subprocess.Popen(command, cwd=tmp_path, env=user_env(mlflow_uri), stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def logged_every_epoch(history: dict[str, list[tuple[int, float]]], epochs: int) -> bool:
    """Each metric logged once per epoch, 1 to `epochs`; the validation metrics also at step 0 (the default
    strategy's linear probe, the model before the first epoch)."""
    return all([step for step, _ in steps] == list(range(0 if key.startswith("val_") else 1, epochs + 1))
               for key, steps in history.items())  # fmt: skip


@pytest.fixture
def larger_folder(tmp_path: Path) -> Path:
    # Epochs of about a second: the run is still training when each signal arrives.
    return make_image_folder(tmp_path / "data", {"train": 30, "val": 6})


def test_killed_then_interrupted_then_resumed_ends_exactly_as_an_uninterrupted_run(tmp_path, larger_folder, mlflow_uri):
    # kill -9 once the first checkpoint is saved, resume from the run's folder; Ctrl-C once the resumed run has
    # saved another epoch, resume by run id. Where each signal landed is read from the checkpoint the run left,
    # not assumed from timing, so a slow or loaded machine changes which epochs, not the outcome.
    epochs = 5
    run_dir, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.pt"
    process = start_training(tmp_path, larger_folder, mlflow_uri, run_dir, epochs=epochs)
    wait_for(checkpoint, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run,) = runs(mlflow_uri)
    assert run.info.status == "RUNNING"  # nothing could end it
    killed_after = checkpoints.load(checkpoint).epochs_done
    assert 1 <= killed_after < epochs

    saved = (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns)
    process = start_training(tmp_path, larger_folder, mlflow_uri, run_dir, resume=run_dir)
    while (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns) == saved:  # replaced whole after an epoch
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert f"resuming after epoch {killed_after}/{epochs}" in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"resume={checkpoint}" in errors[0], stderr[-2000:]
    (run,) = runs(mlflow_uri)
    assert run.info.status == "KILLED"
    interrupted_after = checkpoints.load(checkpoint).epochs_done
    assert killed_after < interrupted_after < epochs

    resumed = run_cli(f"resume={run.info.run_id}", "trainer.progress=false", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {interrupted_after}/{epochs}" in resumed.stderr
    straight = run_cli(
        *tiny(larger_folder), f"epochs={epochs}", "trainer.progress=false", cwd=tmp_path, mlflow_uri=mlflow_uri
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    by_id = {r.info.run_id: r for r in runs(mlflow_uri)}
    assert len(by_id) == 2 and all(r.info.status == "FINISHED" for r in by_id.values())
    continued = by_id.pop(run.info.run_id)
    (uninterrupted,) = by_id.values()
    continued_history, uninterrupted_history = histories(continued.info.run_id), histories(uninterrupted.info.run_id)
    assert logged_every_epoch(continued_history, epochs)
    assert_same_numbers(
        {key: [value for _, value in history] for key, history in continued_history.items()},
        {key: [value for _, value in history] for key, history in uninterrupted_history.items()},
    )
    best = continued.data.metrics["best_val_acc"]
    assert best == pytest.approx(uninterrupted.data.metrics["best_val_acc"], abs=1e-6)
    assert not checkpoint.exists()  # finished and logged: the state is not needed


def test_parallel_sweep_with_failing_jobs_logs_every_other_job_and_lists_the_failures(
    tmp_path, image_folder, mlflow_uri
):
    # Five jobs, three at a time (each with a DataLoader worker, which loky's own process start method
    # would break), into the embedded sqlite store: one job's config is rejected
    # before its run starts, one diverges mid-training; the other three must finish with every metric.
    result = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", *tiny(image_folder), "epochs=2",
        "trainer.progress=false", "data.num_workers=1", "lr=1e-3,3e-3,1e-2,-1,1e12", "optimizer=sgd", "scheduler=step",
        cwd=tmp_path, mlflow_uri=mlflow_uri,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "sweep job 3 failed: lr=-1 is not allowed" in result.stderr
    all_runs = runs(mlflow_uri)
    (parent,) = [run for run in all_runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in all_runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    finished = sorted(run.info.run_name for run in children if run.info.status == "FINISHED")
    assert finished == ["lr=0.001", "lr=0.003", "lr=0.01"]
    for run in children:
        if run.info.status == "FINISHED":
            assert logged_every_epoch(histories(run.info.run_id), 2)
    (diverged,) = [run for run in children if run.info.status == "FAILED"]
    assert diverged.info.run_name == "lr=1000000000000.0" and "(lr=1e+12); lower lr" in diverged.data.tags["tl.error"]
    assert parent.info.status == "FAILED" and parent.data.tags["tl.failed_jobs"] == "2"
    assert "lr=-1: sweep job 3 failed: lr=-1 is not allowed" in parent.data.tags["tl.failed_job.3"]
    assert "loss is" in parent.data.tags["tl.failed_job.4"]
    assert parent.data.tags["tl.best_child"] in finished
    summary = MlflowClient().download_artifacts(parent.info.run_id, "sweep/failures.csv", str(tmp_path))
    assert len(Path(summary).read_text().splitlines()) == 3
