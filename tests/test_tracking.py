import fcntl
import http.server
import io
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from tl.core.provenance import CodeState
from tl.data.manifest import DatasetFingerprint
from tl.models.backbones import efficientnet_lite0
from tl.tracking.processes import _identity, this_process
from tl.tracking.runs import PROCESS_TAG
from tl.tracking.stores import _lock_path, _unreachable, create_store_in_background, use_store
from tl.tracking.tracker import MlflowTracker, flatten, run_name


def test_flatten_gives_dotted_keys_and_drops_hydra_keys():
    cfg = OmegaConf.create({"lr": 0.1, "model": {"_target_": "x.y", "name": "resnet18", "inner": {"n": 2}}})
    assert flatten(cfg) == {"lr": 0.1, "model.name": "resnet18", "model.inner.n": 2}


def test_runs_are_named_by_overrides_and_sweep_jobs_by_the_swept_ones():
    overrides = ["strategy=frozen", "lr=0.01", "epochs=1", "+experiment=x"]
    assert run_name(overrides) == "strategy=frozen,lr=0.01,epochs=1,+experiment=x"
    assert run_name(overrides, ["strategy", "lr"]) == "strategy=frozen,lr=0.01"
    assert run_name([]) == "defaults"


def test_a_new_run_ends_failed_the_runs_left_running_by_dead_processes_of_this_machine(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("t")
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    gone_process = f"{socket.gethostname()}:{gone.pid}{_identity(gone.pid)}"  # as it wrote it while alive
    gone.wait()
    left = {
        "killed here": gone_process,
        "alive here": this_process(),
        "elsewhere": "another-host:1",
        "killed here, pid reused": this_process().rsplit("/", 1)[0] + "/1",  # this pid, started another time
        "logged by an earlier tl": None,
    }
    ids = {name: client.create_run(experiment, tags={PROCESS_TAG: p} if p else {}).info.run_id
           for name, p in left.items()}  # fmt: skip
    with MlflowTracker(experiment="t", uri=mlflow_uri):
        pass
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"killed here": "FAILED", "alive here": "RUNNING", "elsewhere": "RUNNING",
                      "killed here, pid reused": "FAILED", "logged by an earlier tl": "RUNNING"}  # fmt: skip
    assert "stopped while it ran" in client.get_run(ids["killed here"]).data.tags["tl.error"]


@pytest.mark.parametrize(
    ("raised", "status"), [(None, "FINISHED"), (RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_run_ends_with_a_status_that_says_how_it_ended(mlflow_uri, raised, status):
    tracker = MlflowTracker(experiment="t", uri=mlflow_uri, overrides=["lr=0.1"])
    if raised is None:
        with tracker:
            pass
    else:
        with pytest.raises(raised), tracker:  # the tracker ends the run and lets the error through
            raise raised()
    assert MlflowClient(mlflow_uri).get_run(tracker.run_id).info.status == status


def test_logged_model_loads_and_predicts_any_batch_size(mlflow_uri):
    model = efficientnet_lite0(num_classes=4)
    model.network.eval()
    example = torch.randn(2, 3, 32, 32)
    metadata = {"classes": ["a", "b", "c", "d"], "preprocess": asdict(model.preprocess.at_size(32))}
    with MlflowTracker(experiment="t", uri=mlflow_uri) as tracker:
        tracker.log_model(model.network, example, metadata=metadata)
    # The tensor-in form: the network itself, for any batch size.
    loaded = mlflow.pytorch.load_model(f"runs:/{tracker.run_id}/model")
    batch = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model.network(batch)
        np.testing.assert_allclose(loaded(batch).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    # The pyfunc: image files in, one answer per image out.
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{tracker.run_id}/model")
    answers = pyfunc.predict(pd.DataFrame({"image": [png_bytes(i) for i in range(5)]}))
    assert list(answers.columns) == ["label", "probability", "top_k", "error"] and len(answers) == 5
    assert set(answers["label"]) <= {"a", "b", "c", "d"} and answers["error"].isna().all()
    assert pyfunc.metadata.metadata["classes"] == ["a", "b", "c", "d"]


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    file = io.BytesIO()
    Image.fromarray(pixels).save(file, "PNG")
    return file.getvalue()


@pytest.mark.parametrize("skipped", [[], [("train/a/x.png", "truncated"), ("val/b/y.jpg", "not an image")]])
def test_provenance_records_the_images_that_were_skipped(mlflow_uri, skipped):
    dataset = DatasetFingerprint("0" * 64, {"train": {"a": 1}}, [("train/a/ok.png", 10, "1" * 64)], skipped, "/d/ants")
    model = SimpleNamespace(weights="none", weights_sha256=None)  # all log_provenance reads of a model
    with MlflowTracker(experiment="t", uri=mlflow_uri) as tracker:
        tracker.log_provenance(CodeState(None, False, ""), {"python": "3"}, dataset, model)
    run = MlflowClient(mlflow_uri).get_run(tracker.run_id)
    assert run.data.metrics["data_skipped_images"] == len(skipped)
    (logged,) = run.inputs.dataset_inputs  # what the UI's "Dataset" column shows
    assert (logged.dataset.name, logged.dataset.digest) == ("ants", "0" * 32)
    assert '"/d/ants"' in logged.dataset.source
    manifest = mlflow.artifacts.load_dict(f"runs:/{tracker.run_id}/provenance/dataset_manifest.json")
    assert [tuple(row) for row in manifest["skipped"]] == skipped
    logged = [a.path for a in MlflowClient(mlflow_uri).list_artifacts(tracker.run_id, "provenance")]
    assert ("provenance/skipped_images.csv" in logged) == bool(skipped)
    if skipped:
        csv_text = mlflow.artifacts.load_text(f"runs:/{tracker.run_id}/provenance/skipped_images.csv")
        assert csv_text.splitlines() == ["path,reason", "train/a/x.png,truncated", "val/b/y.jpg,not an image"]


def test_a_new_local_store_is_created_in_the_background_and_opens_while_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default: ./mlflow.db
    mlflow.set_tracking_uri(None)
    child = create_store_in_background(None)
    assert child is not None and child.wait(timeout=120) == 0
    assert create_store_in_background(None) is None  # it exists now
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment("0").name == "Default"
    # Opened while the child starts (this process takes the store's lock first and creates it) and
    # while the child holds the lock, creating it (this process waits): both end well, both orders.
    for name, wait_for_the_child in (("first.db", False), ("second.db", True)):
        uri = f"sqlite:///{tmp_path / name}"
        child = create_store_in_background(uri)
        while wait_for_the_child and child.poll() is None and not locked(_lock_path(tmp_path / name)):
            time.sleep(0.01)
        try:
            experiment_id = use_store(uri, "t")
        finally:
            assert child.wait(timeout=120) == 0
            mlflow.set_tracking_uri(None)
        assert MlflowClient(uri).get_experiment(experiment_id).name == "t"


def locked(path) -> bool:
    """Whether another process holds the flock on `path`."""
    with open(path, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
    return False


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:///:memory:", "postgresql://db/mlflow"])
def test_only_a_new_sqlite_store_is_created_in_the_background(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert create_store_in_background(uri) is None


def test_a_server_that_answers_health_with_a_login_request_counts_as_answering(tmp_path):
    class AsksForALogin(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), AsksForALogin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _unreachable(f"http://127.0.0.1:{server.server_address[1]}") is None
    finally:
        server.shutdown()
    assert _unreachable("http://127.0.0.1:9") is not None  # nothing listens there
