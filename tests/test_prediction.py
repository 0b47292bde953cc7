import contextlib
import csv
from dataclasses import asdict
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import log_untrained_model, make_image_folder, run_cli
from tl.core.errors import TLError
from tl.models.backbones import efficientnet_lite0
from tl.serving.prediction import list_inputs, load_logged_model, predict, predict_to_csv

CLASSES = ["ants", "bees", "wasps"]


@pytest.fixture
def logged_model_uri(mlflow_uri):
    return log_untrained_model(CLASSES)


def test_folder_with_class_subfolders_is_labelled_and_a_flat_folder_is_not(tmp_path):
    root = make_image_folder(tmp_path / "d", {"val": 2})
    rows = list_inputs(root / "val")
    assert len(rows) == 6 and {row.label for row in rows} == set(CLASSES)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((root / "val" / "ants" / "0.png").read_bytes())
    (flat / ".DS_Store").write_bytes(b"x")
    assert [(r.path, r.label) for r in list_inputs(flat)] == [(str(flat / "a.png"), None)]
    assert len(list_inputs(flat / "a.png")) == 1


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(TLError, match="does not exist"):
        list_inputs(tmp_path / "nope")


def test_unreadable_files_are_reported_and_the_rest_predicted(tmp_path, logged_model_uri):
    root = make_image_folder(tmp_path / "d", {"val": 2}) / "val"
    (root / "ants" / "notes.txt").write_text("not an image")
    (root / "bees" / "empty.jpg").write_bytes(b"")
    (root / "wasps" / "truncated.png").write_bytes((root / "wasps" / "0.png").read_bytes()[:200])
    model = load_logged_model(logged_model_uri)
    assert model.classes == CLASSES and model.preprocess.input_size == 32
    rows = predict(model, list_inputs(root), batch_size=4)
    errors = {row.path.split("/")[-1]: row.error for row in rows if row.error}
    assert set(errors) == {"notes.txt", "empty.jpg", "truncated.png"}
    predicted = [row for row in rows if not row.error]
    assert len(predicted) == 6 and all(r.prediction in CLASSES and 0 < r.probability <= 1 for r in predicted)
    tally = predict_to_csv(model, list_inputs(root), tmp_path / "out.csv", batch_size=4, threads=1)
    assert (tally.predicted, tally.unreadable) == (6, 3)
    assert tally.accuracy == sum(r.prediction == r.label for r in predicted) / 6
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "path,prediction,probability,label,error" and len(lines) == 10


def test_model_uri_that_does_not_exist_is_a_user_error(mlflow_uri):
    with pytest.raises(TLError, match="could not load model_uri"):
        load_logged_model("models:/no_such_model/1")


class Trap(torch.nn.Module):
    """A model whose unpickling creates a file: what a pickled model can do to whoever loads it."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, images):
        return images

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


@pytest.fixture
def pickled_model_alias(tmp_path, mlflow_uri):
    """A pickled PyTorch model with tl's metadata, registered as `trap` and aliased `champion`."""
    marker = tmp_path / "marker"
    metadata = {"classes": CLASSES, "preprocess": asdict(efficientnet_lite0(num_classes=3).preprocess.at_size(32))}
    mlflow.set_experiment("trap")
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            Trap(str(marker)), name="model", serialization_format="pickle", pip_requirements=["torch"],
            metadata=metadata, registered_model_name="trap",
        )  # fmt: skip
    MlflowClient().set_registered_model_alias("trap", "champion", "1")
    assert not marker.exists()  # logging it did not unpickle it
    return "models:/trap@champion", marker


def test_a_pickled_model_is_refused_before_it_is_unpickled(pickled_model_alias):
    model_uri, marker = pickled_model_alias
    with pytest.raises(TLError, match=r"models:/trap@champion is a pickled PyTorch model.*allow_pickle=true"):
        load_logged_model(model_uri)
    assert not marker.exists()
    with contextlib.suppress(Exception):  # opted in: unpickled, and the trap goes off (the model is no model)
        load_logged_model(model_uri, allow_pickle=True)
    assert marker.exists()


@pytest.mark.slow
def test_predict_py_on_an_alias_of_a_pickled_model_exits_in_one_line_and_runs_nothing(
    tmp_path, pickled_model_alias, mlflow_uri
):
    model_uri, marker = pickled_model_alias
    image = make_image_folder(tmp_path / "d", {"val": 1}) / "val" / "ants" / "0.png"
    result = run_cli(f"model_uri={model_uri}", f"input={image}", cwd=tmp_path, mlflow_uri=mlflow_uri,
                     script="predict.py")  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "is a pickled PyTorch model" in line and not marker.exists()


def test_a_torch_export_model_with_a_code_folder_or_a_pickle_beside_it_is_refused(tmp_path, logged_model_uri):
    # MLflow's PyTorch flavour puts a model's `code` folder on sys.path and, when its data folder (tl's:
    # `artifacts`) holds a model.pth, imports the pickle module named in pickle_module_info.txt: code of
    # the model's author.
    marker = tmp_path / "marker"
    model = Path(mlflow.artifacts.download_artifacts(logged_model_uri, dst_path=str(tmp_path / "m")))
    (model / "code").mkdir(exist_ok=True)  # the pyfunc's own code folder (archive_check.py) is there already
    (model / "code" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (model / "artifacts" / "model.pth").write_bytes(b"not read")
    (model / "artifacts" / "pickle_module_info.txt").write_text("evil")
    mlmodel = (model / "MLmodel").read_text()
    (model / "MLmodel").write_text(mlmodel.replace("model_data: artifacts", "model_data: artifacts\n    code: code"))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model), "model")
    with pytest.raises(TLError, match=r"is a pickled PyTorch model, and loading it could run"):
        load_logged_model(f"runs:/{run.info.run_id}/model")
    assert not marker.exists()
    (model / "artifacts" / "model.pth").unlink()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model), "model")
    with pytest.raises(TLError, match=r"carries a code folder, which MLflow would put on the import path"):
        load_logged_model(f"runs:/{run.info.run_id}/model")
    assert not marker.exists()


def test_predictions_stream_to_a_partial_file_that_a_stopped_run_resumes(tmp_path, logged_model_uri):
    root = make_image_folder(tmp_path / "d", {"val": 3}) / "val"
    (root / "ants" / "notes.txt").write_text("not an image")
    model = load_logged_model(logged_model_uri)
    rows = list_inputs(root)
    output = tmp_path / "out" / "predictions.csv"
    # A run stopped after two images, the second line cut short: what it finished is kept, not redone;
    # a line for a file no longer in the input is dropped.
    done = (f"path,prediction,probability,label,error\n{root}/gone.png,ants,0.5,ants,\n"
            f"{rows[0].path},wasps,0.25,ants,\n{rows[1].path},be")  # fmt: skip
    output.parent.mkdir()
    partial, used = tmp_path / "out" / "predictions.csv.partial", tmp_path / "out" / "predictions.csv.partial.model"

    def stopped_run(model_uri: str) -> None:
        partial.write_text(done)
        used.write_text(model_uri)

    stopped_run("models:/other/1")  # another model's lines are not mixed in: all predicted again
    predict_to_csv(model, rows, output, batch_size=4, threads=2, model_uri=logged_model_uri)
    assert [line["path"] for line in csv.DictReader(output.open())] == [row.path for row in rows]
    assert next(csv.DictReader(output.open()))["probability"] != "0.25"  # predicted, not the stopped run's line
    stopped_run(logged_model_uri)
    tally = predict_to_csv(model, rows, output, batch_size=4, threads=2, model_uri=logged_model_uri)
    assert not partial.exists() and not used.exists() and not partial.with_name(partial.name + ".tmp").exists()
    lines = list(csv.DictReader(output.open()))
    assert [line["path"] for line in lines] == [rows[0].path] + [row.path for row in rows[1:]]
    assert lines[0]["prediction"] == "wasps" and lines[0]["probability"] == "0.25"
    assert tally.predicted == 9 and tally.unreadable == 1 and tally.labelled == 9
    # The same answers as one batch at a time on all torch threads (the run above: two at a time, one thread each).
    again = {row.path: row for row in predict(model, list_inputs(root), batch_size=3)}
    for line in lines[1:]:
        row = again[line["path"]]
        assert line["prediction"] == (row.prediction or "") and line["error"] == (row.error or "")
        assert float(line["probability"] or 0) == pytest.approx(row.probability or 0, abs=1e-6)
