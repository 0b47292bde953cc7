"""The logged model as a pyfunc: image files in, answers out, alike in predict.py, in a process without tl
and behind `mlflow models serve`; bad images and bad requests answered in one line."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from tests.helpers import log_untrained_model, make_image_folder, run_cli, runs, tiny
from tl.models.pyfunc_model import MAX_IMAGE_BYTES
from tl.serving.prediction import Row, load_logged_model, predict

CLASSES = ["ants", "bees", "wasps"]
UNREADABLE = "no image in the request could be read (image 0: not an image"
NO_COLUMN = "no 'image' column: send each image file, base64, as 'image'"


@pytest.fixture
def model_uri(mlflow_uri):
    return log_untrained_model(CLASSES)


@pytest.fixture
def images(tmp_path) -> list[Path]:
    """Three image files: two PNGs (RGB and grey) and a JPEG, of different sizes."""
    folder = make_image_folder(tmp_path / "d", {"val": 2}) / "val"
    jpeg = tmp_path / "photo.jpg"
    Image.open(folder / "bees" / "0.png").resize((75, 50)).save(jpeg, quality=90)
    return [folder / "ants" / "0.png", folder / "wasps" / "1.png", jpeg]


def test_the_pyfunc_loads_and_answers_in_a_process_that_cannot_import_tl(tmp_path, model_uri, mlflow_uri, images):
    script = f"""
import sys
sys.modules["tl"] = None  # `import tl` fails from here on (tl is installed, editable)
import json
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({model_uri!r})
files = [open(path, "rb").read() for path in {[str(p) for p in images]!r}]
answers = model.predict(pd.DataFrame({{"image": files}}), params={{"top_k": 2}})
try:
    import tl
except ImportError:
    print(json.dumps(answers.to_dict("records")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    # predict.py's way: tl's own code, the network as the torch.export program.
    expected = predict(load_logged_model(model_uri), [Row(str(path)) for path in images], batch_size=2)
    assert [a["label"] for a in answers] == [row.prediction for row in expected]
    assert [a["probability"] for a in answers] == pytest.approx([row.probability for row in expected], abs=1e-6)
    for answer in answers:
        assert answer["error"] is None and len(answer["top_k"]) == 2
        assert answer["top_k"][0] == {"label": answer["label"], "probability": answer["probability"]}
        assert answer["top_k"][0]["probability"] >= answer["top_k"][1]["probability"]


def test_an_unreadable_image_gets_an_error_and_the_others_their_answers(model_uri, images):
    model = mlflow.pyfunc.load_model(model_uri)
    good = images[0].read_bytes()
    huge = io.BytesIO()
    Image.new("L", (8000, 7000)).save(huge, "PNG")  # 56 megapixels in a small file
    files = [good, b"just some text\n", b"", huge.getvalue(), bytes(MAX_IMAGE_BYTES + 1), good]
    answers = model.predict(pd.DataFrame({"image": files}))
    assert answers["label"][0] == answers["label"][5] in CLASSES and answers["error"][0] is None
    assert list(answers["error"][1:5]) == [
        "not an image (PNG, JPEG, or another format Pillow reads)",
        "empty (0 bytes)",
        "too large: 8000x7000 pixels, the limit is 50 megapixels",
        "too large: 20.0 MiB, the limit is 20 MiB",
    ]
    assert answers["label"][1:5].isna().all() and answers["top_k"][1:5].isna().all()


@pytest.mark.parametrize(
    ("request_frame", "reason"),
    [
        (
            pd.DataFrame({"image": [b"just some text\n"]}),
            UNREADABLE,
        ),
        (pd.DataFrame({"image": pd.Series([], dtype=object)}), "the request has no images"),
        (pd.DataFrame({"img": [b"x"]}), NO_COLUMN),
    ],
)
def test_a_request_without_a_readable_image_is_refused_in_one_line(model_uri, request_frame, reason):
    model = mlflow.pyfunc.load_model(model_uri)
    with pytest.raises(MlflowException) as raised:
        model.predict(request_frame)
    message = json.loads(raised.value.serialize_as_json())["message"]
    assert message.startswith(reason) and "\n" not in message
    assert raised.value.get_http_status_code() == 400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict]:
    """POST `body` as JSON: the status and the decoded answer."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def image_request(*files: bytes) -> bytes:
    """MLflow's scoring protocol: a `dataframe_split` whose `image` column is each file, base64."""
    rows = [[base64.b64encode(data).decode()] for data in files]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_predict_py_does_and_bad_requests_in_one_line(tmp_path, mlflow_uri, images):
    trained = run_cli(*tiny(make_image_folder(tmp_path / "data")), "epochs=1", "strategy=frozen",
                      "tracking.register=ants", cwd=tmp_path, mlflow_uri=mlflow_uri)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert runs(mlflow_uri)[0].info.status == "FINISHED"
    port, log = free_port(), (tmp_path / "serve.log").open("w")
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` starts uvicorn from PATH
    server = subprocess.Popen(
        [str(Path(bin_dir, "mlflow")), "models", "serve", "-m", "models:/ants/1", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, stdout=log, stderr=log, start_new_session=True,  # its own group: uvicorn is its child
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        # predict.py on the same files while the server starts.
        folder = tmp_path / "to_predict"
        folder.mkdir()
        for i, path in enumerate(images):
            (folder / f"{i}{path.suffix}").write_bytes(path.read_bytes())
        output = tmp_path / "predictions.csv"
        predicted = run_cli("model_uri=models:/ants/1", f"input={folder}", f"output={output}", cwd=tmp_path,
                            mlflow_uri=mlflow_uri, script="predict.py")  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        expected = list(csv.DictReader(output.open()))
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]

        files = [path.read_bytes() for path in images]
        status, answer = post(f"{url}/invocations", image_request(*files))
        assert status == 200, answer
        answers = answer["predictions"]
        assert [a["label"] for a in answers] == [row["prediction"] for row in expected]
        assert [a["probability"] for a in answers] == pytest.approx(
            [float(r["probability"]) for r in expected], abs=1e-6
        )
        assert all(a["label"] in ["ants", "bees", "wasps"] and a["error"] is None for a in answers)

        # One bad image in a batch: its row says why, the others are answered.
        status, answer = post(f"{url}/invocations", image_request(files[0], b"just some text\n", files[2]))
        assert status == 200 and [a["label"] for a in answer["predictions"]] == [answers[0]["label"], None,
                                                                                 answers[2]["label"]]  # fmt: skip
        assert answer["predictions"][1]["error"].startswith("not an image")

        # Bad requests: 400, a message whose first line names the problem (the model's own: the only line).
        refusals = {
            "text file": (image_request(b"just some text\n"), UNREADABLE),
            "no images": (image_request(), "the request has no images"),
            "unknown column": (json.dumps({"dataframe_records": [{"img": "AAAA"}]}).encode(), NO_COLUMN),
            # MLflow's scoring server answers these before the model sees the request.
            "unknown field": (json.dumps({"images": ["AAAA"]}).encode(), "The input must be a JSON dictionary with"),
            "empty body": (b"", "Invalid input. Ensure that input is a valid JSON formatted string."),
        }  # fmt: skip
        for name, (body, reason) in refusals.items():
            status, answer = post(f"{url}/invocations", body)
            assert status == 400, (name, answer)
            assert answer["message"].startswith(reason), (name, answer)
            if name in ("text file", "no images", "unknown column", "unknown field"):
                assert "\n" not in answer["message"], (name, answer)

        status, answer = post(f"{url}/invocations", image_request(files[1]))  # still serving
        assert status == 200 and answer["predictions"][0]["label"] == answers[1]["label"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
