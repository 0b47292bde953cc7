"""tl's Optuna sweeper (tl/sweeps/search.py, tl/sweeps/studies.py): search spaces, stored studies and their
checks, trials of a sweeper that died; end to end, studies continued, shared by two sweepers in PostgreSQL, and a
sweeper killed mid-trial; and an MLflow server whose store is PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tests.helpers import ROOT, run_cli, runs, tiny, user_env
from tests.servers import create_database, free_port, start_mlflow_server
from tl.core.errors import TLError
from tl.sweeps import pruning, studies
from tl.sweeps import search as optuna_search
from tl.sweeps.search import BEST_TAG, STORAGE_TAG, STUDY_ID_TAG, STUDY_TAG, TRIAL_TAG, search_space
from tl.tracking.processes import end_runs_of_dead_processes
from tl.tracking.runs import PARENT_RUN_ENV, PROCESS_TAG

SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}


def test_the_search_space_grammar_is_hydra_optuna_sweepers_and_the_command_line_fixes_a_searched_key():
    space, fixed = search_space([
        "lr=tag(log, interval(1e-4, 1e-1))", "strategy=choice(finetune, frozen)", "epochs=range(1, 4)",
        "batch_size=int(interval(4, 16))", "momentum=interval(0.8, 0.99)", "strategy=frozen", "seed=3",
    ])  # fmt: skip
    assert space == {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "epochs": IntDistribution(1, 3),  # range() excludes its stop
        "batch_size": IntDistribution(4, 16),
        "momentum": FloatDistribution(0.8, 0.99),
    }
    assert fixed == ["strategy=frozen", "seed=3"]
    space, _ = search_space(["strategy=choice(finetune, frozen)", "epochs=range(1, 6, 2)"])
    assert space["strategy"] == CategoricalDistribution(["finetune", "frozen"])
    assert space["epochs"] == IntDistribution(1, 5, step=2)  # 1, 3 and 5, as range(1, 6, 2)


def test_a_stored_study_is_continued_only_with_its_space_metric_and_direction(tmp_path):
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=None)
    study = studies.open_study(storage, "s", "maximize", SPACE, "val_acc", optuna.samplers.RandomSampler())
    study.tell(study.ask(SPACE), 0.5)
    again = studies.open_study(storage, "s", "maximize", SPACE, "val_acc", optuna.samplers.RandomSampler())
    assert len(again.trials) == 1
    assert studies.study_id(again) == studies.study_id(study) and len(studies.study_id(study)) == 32
    with pytest.raises(TLError, match="has a quote in it"):
        studies.open_study(storage, "it's", "maximize", SPACE, "val_acc", optuna.samplers.RandomSampler())
    refusals = [
        (("minimize", SPACE, "val_acc"), "study 's' maximizes val_acc, and this search would minimize val_acc"),
        (("maximize", SPACE, "train_acc"), "study 's' maximizes val_acc, and this search would maximize train_acc"),
        (("maximize", {"lr": FloatDistribution(1e-3, 1e-1, log=True)}, "val_acc"), "searches another space (lr differ"),
        (("maximize", {**SPACE, "epochs": IntDistribution(1, 3)}, "val_acc"), "epochs is not searched"),
    ]
    for (direction, space, objective), reason in refusals:
        with pytest.raises(TLError, match="hydra.sweeper.study_name") as refused:
            studies.open_study(storage, "s", direction, space, objective, optuna.samplers.RandomSampler())
        assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_storages_that_cannot_be_used_are_named_in_one_line_without_their_password(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(TLError, match=rf"the Optuna storage postgresql://tl@127.0.0.1:{port}/optuna cannot be used"):
        studies.open_storage(f"postgresql://tl@127.0.0.1:{port}/optuna", heartbeat_interval=None)
    with pytest.raises(TLError, match="has a password in it") as refused:
        studies.open_storage("postgresql://tl:s3cret@127.0.0.1/optuna", heartbeat_interval=None)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(TLError, match="has a password in it"):
        studies.open_storage("postgresql://tl@127.0.0.1/optuna?password=s3cret", heartbeat_interval=None)
    location = studies.storage_location("postgresql://tl@127.0.0.1/optuna?sslmode=require&password=s3cret")
    assert location == "postgresql://tl@127.0.0.1/optuna"
    with pytest.raises(TLError, match="is not a database URL"):
        studies.open_storage("optuna.db", heartbeat_interval=None)
    with pytest.raises(TLError, match="does not exist"):
        studies.open_storage(f"journal:{tmp_path / 'no' / 'optuna.log'}", heartbeat_interval=None)


def test_a_journal_file_keeps_a_study_between_commands(tmp_path):
    url = f"journal:{tmp_path / 'optuna.log'}"
    study = studies.open_study(studies.open_storage(url, None), "s", "minimize", SPACE, "val_loss",
                               optuna.samplers.RandomSampler())  # fmt: skip
    study.tell(study.ask(SPACE), 0.25)
    again = studies.open_study(studies.open_storage(url, None), "s", "minimize", SPACE, "val_loss",
                               optuna.samplers.RandomSampler())  # fmt: skip
    assert [trial.value for trial in again.trials] == [0.25]
    assert studies.storage_location(url) == f"journal:{tmp_path / 'optuna.log'}"


def test_running_trials_of_a_stopped_sweeper_are_failed_and_others_are_left_running(tmp_path):
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1)
    study = studies.open_study(storage, "s", "maximize", SPACE, "val_acc", optuna.samplers.RandomSampler())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owners = {
        "dead here": f"{socket.gethostname()}:{gone.pid}",
        "alive here": f"{socket.gethostname()}:{os.getpid()}",
        "elsewhere": "another-host:1",
        "elsewhere, silent": "another-host:2",
    }
    trials = {}
    for name, owner in owners.items():
        trials[name] = study.ask(SPACE)
        trials[name].set_user_attr(PROCESS_TAG, owner)
    for name in ("alive here", "elsewhere"):
        storage.record_heartbeat(trials[name]._trial_id)
    storage.record_heartbeat(trials["elsewhere, silent"]._trial_id)
    time.sleep(3.2)  # past the grace period of two heartbeat intervals (the database keeps whole seconds)
    for name in ("alive here", "elsewhere"):
        storage.record_heartbeat(trials[name]._trial_id)
    failed = studies.fail_abandoned_trials(study)
    assert sorted(trial.number for trial in failed) == [trials["dead here"].number, trials["elsewhere, silent"].number]
    states = {name: study.trials[trial.number].state for name, trial in trials.items()}
    assert states == {"dead here": TrialState.FAIL, "alive here": TrialState.RUNNING,
                      "elsewhere": TrialState.RUNNING, "elsewhere, silent": TrialState.FAIL}  # fmt: skip


def test_runs_of_abandoned_trials_and_of_dead_processes_end_failed_and_others_are_left(mlflow_uri, monkeypatch):
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("tl")
    parent = client.create_run(experiment).info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = {STUDY_TAG: "shared", STORAGE_TAG: "sqlite:////x/optuna.db", STUDY_ID_TAG: "c0ffee"}
    runs_by_name = {
        "abandoned elsewhere": {**study, TRIAL_TAG: "3", PROCESS_TAG: "another-host:1"},
        "running elsewhere": {**study, TRIAL_TAG: "4", PROCESS_TAG: "another-host:2"},
        "dead here": {**study, PROCESS_TAG: f"{socket.gethostname()}:{gone.pid}"},  # a dead sweeper's parent run
        "alive here": {**study, TRIAL_TAG: "5", PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"},
        "another study": {**study, STUDY_ID_TAG: "beef", TRIAL_TAG: "3", PROCESS_TAG: "another-host:1"},
    }
    ids = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in runs_by_name.items()}
    end_runs_of_dead_processes(experiment)  # what the sweep callback does first
    optuna_search._end_abandoned_runs("c0ffee", abandoned_trials={3})
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"abandoned elsewhere": "FAILED", "running elsewhere": "RUNNING", "dead here": "FAILED",
                      "alive here": "RUNNING", "another study": "RUNNING"}  # fmt: skip
    assert "stopped while it ran" in client.get_run(ids["dead here"]).data.tags["tl.error"]


def test_each_jobs_result_is_told_and_failed_or_valueless_jobs_fail_their_trials(caplog):
    study = optuna.create_study(direction="maximize")
    trials = [study.ask(SPACE) for _ in range(5)]
    jobs = [JobReturn(status=JobStatus.COMPLETED, _return_value=value) for value in (0.5, float("nan"), None)]
    jobs += [JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("diverged"))]
    study.tell(trials[4], state=TrialState.FAIL)  # failed meanwhile by another sweeper: not told twice
    jobs += [JobReturn(status=JobStatus.COMPLETED, _return_value=0.7)]
    search = optuna_search.OptunaSearch(None, "maximize", None, "s", 5, 5, 1.0, None, None)
    with caplog.at_level("WARNING", logger="tl"):
        search._tell(study, trials, jobs)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] + [TrialState.FAIL] * 4
    assert [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()] == [
        "trial 1 failed: it returned nan, not a finite number",
        "trial 2 failed: it returned None, not a finite number",
        "trial 3 failed: diverged",
    ]
    assert study.trials[0].value == 0.5
    with pytest.raises(RuntimeError, match="diverged"):  # more failed than max_failure_rate allows
        optuna_search.OptunaSearch(None, "maximize", None, "s", 1, 1, 0.0, None, None)._tell(
            study, [study.ask(SPACE)], [jobs[3]]
        )


# End to end: the command, on tiny images.


def search(image_folder: Path, storage: str, *extra: str) -> list[str]:
    """The README's stored-study command on tiny images: run.py's arguments."""
    return ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
            "strategy=frozen", *tiny(image_folder), *extra]  # fmt: skip


def trial_states(storage: str) -> list[str]:
    return [trial.state.name for trial in optuna.load_study(study_name="shared", storage=storage).trials]


def read_only_states(path: Path) -> list[str]:
    """The trials' states as the sweeper writes them, read without opening the study (which would write)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
            return [state for (state,) in database.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.Error:  # not yet created
        return []


def assert_every_trial_has_one_run_and_the_best_is_tagged(storage: str, mlflow_uri: str) -> None:
    """Each finished trial of the study has exactly one finished MLflow run; the best trial's run, and
    no other, is tagged as the study's best; no run is left RUNNING."""
    study = optuna.load_study(study_name="shared", storage=storage)
    logged = runs(mlflow_uri)
    assert not [r for r in logged if r.info.status == "RUNNING"]
    trial_runs = [r for r in logged if TRIAL_TAG in r.data.tags]
    finished = sorted(t.number for t in study.trials if t.state == TrialState.COMPLETE)
    assert sorted(int(r.data.tags[TRIAL_TAG]) for r in trial_runs if r.info.status == "FINISHED") == finished
    assert all(r.data.tags[STUDY_TAG] == "shared" for r in trial_runs)
    assert {r.data.tags[STUDY_ID_TAG] for r in trial_runs} == {study.user_attrs["tl.study_id"]}
    for run in trial_runs:  # each run's logged value is its trial's
        trial = study.trials[int(run.data.tags[TRIAL_TAG])]
        if run.info.status == "FINISHED":
            assert run.data.metrics["best_val_acc"] == pytest.approx(trial.value)
            assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
    (best,) = [r for r in trial_runs if r.data.tags.get(BEST_TAG) == "true"]
    assert best.data.tags[TRIAL_TAG] == str(study.best_trial.number)


@pytest.mark.slow
def test_the_same_command_again_adds_trials_to_the_stored_study_and_a_mismatch_stops_it_in_one_line(
    tmp_path, image_folder, mlflow_uri
):
    storage = "sqlite:///optuna.db"  # relative, as in the README: in the folder the command runs in
    args = search(image_folder, storage, "hydra.sweeper.n_trials=2", "epochs=1")
    for _ in range(2):
        result = run_cli(*args, cwd=tmp_path, mlflow_uri=mlflow_uri)
        assert result.returncode == 0, result.stderr[-3000:]
    stored = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert trial_states(stored) == ["COMPLETE"] * 4
    assert_every_trial_has_one_run_and_the_best_is_tagged(stored, mlflow_uri)
    lrs = [t.params["lr"] for t in optuna.load_study(study_name="shared", storage=stored).trials]
    assert len(set(lrs)) == 4  # the second command did not propose the first one's values again

    refused = run_cli(*args, "monitor=val_loss", cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: study 'shared' maximizes val_acc, and this search would minimize val_loss; set monitor= and mode= "
        "as the study was begun, or name another study with hydra.sweeper.study_name"
    )
    assert "Traceback" not in refused.stderr and len(trial_states(stored)) == 4
    unreachable = run_cli(*search(image_folder, f"postgresql://tl@127.0.0.1:{free_port()}/optuna"),
                          cwd=tmp_path, mlflow_uri=mlflow_uri)  # fmt: skip
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert "error: the Optuna storage postgresql://tl@127.0.0.1:" in unreachable.stderr.strip().splitlines()[-1]
    assert {r.info.status for r in runs(mlflow_uri)} == {"FINISHED", "FAILED"}  # the refused sweeps' parents


def test_a_run_outside_a_pruned_search_gets_no_judge(monkeypatch, tmp_path):
    median = {"_target_": "optuna.pruners.MedianPruner"}
    monkeypatch.delenv(optuna_search.TRIAL_ENV, raising=False)
    assert pruning.trial_judge(median, 3) is None  # not a trial
    monkeypatch.setenv(optuna_search.TRIAL_ENV, "0")
    monkeypatch.setenv(optuna_search.STORAGE_ENV, "memory")
    assert pruning.trial_judge(None, 3) is None  # a search without a pruner
    url = f"journal:{tmp_path / 'optuna.log'}"
    study = studies.open_study(studies.open_storage(url, None), "s", "maximize", SPACE, "val_acc",
                               optuna.samplers.RandomSampler(), optuna.pruners.ThresholdPruner(lower=0.5))  # fmt: skip
    study.ask(SPACE), study.ask(SPACE)
    monkeypatch.setenv(optuna_search.STORAGE_ENV, url)
    monkeypatch.setenv(optuna_search.STUDY_ENV, "s")
    threshold = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5}
    judge = pruning.trial_judge(threshold, 3)
    assert judge(1, 0.7) is None and judge(2, 0.4).startswith("pruned: ThresholdPruner judged trial 0 hopeless")
    monkeypatch.setenv(optuna_search.TRIAL_ENV, "1")
    last = pruning.trial_judge(threshold, 1)
    assert last(1, 0.4) is None  # the last epoch: reported, not pruned (stopping there saves nothing)
    first, second = optuna.load_study(study_name="s", storage=studies.open_storage(url, None)).trials
    assert first.intermediate_values == {1: 0.7, 2: 0.4} and first.user_attrs[optuna_search.PRUNED_ATTR] == 2
    assert second.intermediate_values == {1: 0.4} and optuna_search.PRUNED_ATTR not in second.user_attrs


@pytest.mark.slow
def test_a_pruner_stops_trials_after_the_epoch_it_judges_and_the_study_and_their_runs_say_pruned(
    tmp_path, image_folder, mlflow_uri
):
    # A pruner that finds every value hopeless from the first epoch on: each trial stops after epoch 1 of 3.
    pruner = "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01}"  # after =null: replaced
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "strategy=frozen", "epochs=3",
            *tiny(image_folder), "hydra.sweeper.pruner=null", pruner,
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    result = run_cli(*args, cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr  # the sweeper's lines are Hydra's, on stdout
    assert "trial 0 pruned after epoch 1" in output and "trial 1 pruned after epoch 1" in output
    # The in-memory study went to a journal file in the sweep's folder, where the jobs reported to it.
    study = optuna.load_study(
        study_name="tl", storage=studies.open_storage(f"journal:{tmp_path / 'sweep' / 'optuna-journal.log'}", None)
    )
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(t.intermediate_values.keys() == {1} for t in study.trials)
    client = MlflowClient(mlflow_uri)
    trial_runs = [r for r in runs(mlflow_uri) if TRIAL_TAG in r.data.tags]
    assert len(trial_runs) == 2 and {r.info.status for r in trial_runs} == {"FINISHED"}
    for run in trial_runs:
        assert run.data.tags[optuna_search.STATE_TAG] == "PRUNED"
        assert run.data.tags["tl.stopped_early"].startswith("pruned: ThresholdPruner judged trial")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]


@pytest.mark.slow
def test_two_sweepers_started_at_once_share_a_postgresql_study_and_a_new_mlflow_store(
    tmp_path, image_folder, mlflow_uri, postgres
):
    storage = create_database(postgres, "shared_study")
    args = search(image_folder, storage, "hydra.sweeper.n_trials=3", "epochs=1")
    env = user_env(mlflow_uri)  # a store that does not exist yet
    command = [sys.executable, str(ROOT / "run.py"), *args]
    sweepers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]  # fmt: skip
    stderrs = []
    for sweeper in sweepers:
        _, stderr = sweeper.communicate(timeout=600)
        assert sweeper.returncode == 0, stderr[-3000:]
        assert "OperationalError" not in stderr
        stderrs.append(stderr)
    assert trial_states(storage) == ["COMPLETE"] * 6, "\n".join(s[-3000:] for s in stderrs)
    assert_every_trial_has_one_run_and_the_best_is_tagged(storage, mlflow_uri)
    parents = [r for r in runs(mlflow_uri) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(p.data.tags[STUDY_TAG] == "shared" for p in parents)
    for parent in parents:  # each sweeper kept its parent run, with its own three trials under it
        children = [r for r in runs(mlflow_uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 3


@pytest.mark.slow
def test_a_sweeper_killed_mid_trial_is_continued_by_the_same_command(tmp_path, image_folder, mlflow_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = search(image_folder, storage, "hydra.sweeper.n_trials=3", "epochs=3", "hydra.sweeper.pruner=null")
    env = user_env(mlflow_uri)
    sweeper = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweeper.poll() is None:  # until trial 1 runs: trial 0 is done
        if read_only_states(tmp_path / "optuna.db")[:2] == ["COMPLETE", "RUNNING"]:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # into the trial's training
    sweeper.send_signal(signal.SIGKILL)
    sweeper.wait()
    assert trial_states(storage) == ["COMPLETE", "RUNNING"]

    result = run_cli(*args, cwd=tmp_path, mlflow_uri=mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 1 of study 'shared' was running when its sweeper" in result.stdout + result.stderr
    assert trial_states(storage) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert_every_trial_has_one_run_and_the_best_is_tagged(storage, mlflow_uri)
    killed = [r for r in runs(mlflow_uri) if r.info.status == "FAILED"]
    assert {r.data.tags.get(TRIAL_TAG) for r in killed} == {"1", None}  # the killed trial's run and its parent
    assert all("stopped while it ran" in r.data.tags["tl.error"] for r in killed)


@pytest.mark.slow
def test_a_run_logged_to_an_mlflow_server_whose_store_is_postgresql_keeps_everything(tmp_path, image_folder, postgres):
    server, url = start_mlflow_server(tmp_path, backend_store_uri=create_database(postgres, "mlflow"))
    try:
        result = run_cli(*tiny(image_folder), "epochs=2", "strategy=frozen", "tracking.register=ants", cwd=tmp_path,
                         mlflow_uri=url)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = runs(url)
        assert run.info.status == "FINISHED" and run.data.params["strategy"] == "frozen"
        history = MlflowClient(url).get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == [1, 2]
        artifacts = {a.path for a in MlflowClient(url).list_artifacts(run.info.run_id)}
        assert {"config", "evaluation", "checkpoints"} <= artifacts
        mlflow.set_tracking_uri(url)
        model_uri = "models:/ants/1"
        assert mlflow.models.get_model_info(model_uri).run_id == run.info.run_id
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
        assert (local / "MLmodel").is_file()  # the logged model (MLflow 3 keeps it beside the run's artifacts)
    finally:
        mlflow.set_tracking_uri(None)
        server.terminate()
        server.wait(timeout=30)
