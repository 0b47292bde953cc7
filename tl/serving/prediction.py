"""Predict with a model that tl logged to MLflow: any model URI, an image file or a folder of any size.

The model carries its class names and evaluation preprocessing in its MLflow metadata, so the
images are transformed exactly as in validation, not re-guessed, by the same code the served model
runs (tl/models/pyfunc_model.py): predict.py and `mlflow models serve` give the same answers. A folder is
streamed: a few batches at a time, on every core, with the CSV written as it goes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from unittest import mock

import mlflow
import torch
import yaml
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from tl.core.errors import TLError, first_line
from tl.models import archive_check
from tl.models.backbones import Preprocess
from tl.models.pyfunc_model import Classifier

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One input image and what became of it: its label (from its folder), the prediction or the error."""

    path: str
    label: str | None = None
    prediction: str | None = None
    probability: float | None = None
    error: str | None = None


def load_logged_model(model_uri: str, allow_pickle: bool = False) -> Classifier:
    """The logged model at `model_uri`, with the metadata tl logged beside it; one-line errors otherwise.

    The model's files are fetched and looked at first: a pickled model (unpickling can run any code that
    whoever logged it put there) is refused unless `allow_pickle`, and so is a model with anything beside its
    program. The network is then loaded as the `torch.export` program tl logs, through
    tl/models/archive_check.py: torch's own loader runs parts of a program's archive as code (size
    expressions, guards, names pasted into generated source, pickles), so the archive is checked first and a
    program that could run code is refused, whatever `allow_pickle` says. The images are read by tl's own
    tl/models/pyfunc_model.py: the copy of that file stored with the model (what `mlflow.pyfunc.load_model`
    and `mlflow models serve` run) is not executed here.
    """
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        if not allow_pickle:
            _check_loads_without_code(local, model_uri)
        program = _program_folder(local) / "model.pt2"
        if program.is_file() and not program.with_name("model.pth").is_file():
            network = archive_check.load_program(program)
        else:  # a pickled model, allowed: MLflow's PyTorch flavour unpickles it
            with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}):
                network = mlflow.pytorch.load_model(str(local), map_location="cpu")
    except archive_check.UnsafeProgram as error:
        raise TLError(f"model_uri={model_uri}: {error}") from None
    except (MlflowException, OSError) as error:
        raise TLError(
            f"could not load model_uri={model_uri} from {mlflow.get_tracking_uri()} ({first_line(error)}); "
            "use runs:/<run_id>/model, models:/<name>/<version> or models:/<name>@<alias>, and tracking_uri if needed"
        ) from error
    if "classes" not in metadata or "preprocess" not in metadata:
        raise TLError(f"{model_uri} has no class names or preprocessing in its metadata: was it logged by tl?")
    preprocess = Preprocess(**metadata["preprocess"])
    return Classifier(network, list(metadata["classes"]), preprocess, bool(metadata.get("tta", False)))


def _program_folder(model_dir: Path) -> Path:
    """The folder MLflow's PyTorch flavour reads the network from (its `model_data`)."""
    flavor = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors", {}).get("pytorch") or {}
    # `artifacts` since the model became a pyfunc too (tl/models/logged_model.py); `data` before.
    return model_dir / str(flavor.get("model_data", "data"))


# The files a torch.export model tl logged may hold beside its program, in its flavour's `model_data`
# folder: `classifier.json` is data (the class names and preprocessing the pyfunc reads).
PROGRAM_FOLDER_FILES = {"model.pt2", "classifier.json"}


def _check_loads_without_code(model_dir: Path, model_uri: str) -> None:
    """A TLError unless the network can be loaded without running code from the model's files: MLflow's
    PyTorch flavour puts a model's `code` folder on sys.path, and unpickles (importing the pickle module its
    files name) any `model.pth` in its data folder; a torch.export program needs neither. (tl's models also
    carry their pyfunc's Python file, which `predict.py` never runs: it reads images with tl's own copy.)"""
    flavor = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors", {}).get("pytorch") or {}
    data = _program_folder(model_dir)
    if (data / "model.pth").is_file():
        problem = "is a pickled PyTorch model"
    elif flavor.get("code"):
        problem = "carries a code folder, which MLflow would put on the import path"
    elif flavor.get("model_data") not in ("artifacts", "data") or not (data / "model.pt2").is_file():
        problem = "is not a torch.export model"
    elif any(path.name not in PROGRAM_FOLDER_FILES for path in data.iterdir()):
        problem = "holds files beside its torch.export program (a pickle or code)"
    else:
        return
    raise TLError(
        f"model_uri={model_uri} {problem}, and loading it could run whatever code is in it; tl loads the "
        "torch.export models it logs only: log the model again with tl, or set allow_pickle=true if you trust "
        "everyone who can write to this model"
    )


def list_inputs(path: Path) -> list[Row]:
    """One row per file; in ImageFolder layout (class subfolders) each row is labelled by its folder."""
    if path.is_file():
        return [Row(str(path))]
    if not path.is_dir():
        raise TLError(f"input={path} does not exist; give an image file or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    subfolders = [p for p in path.iterdir() if p.is_dir()]
    labelled = bool(subfolders) and all(f.parent.parent == path for f in files)
    return [Row(str(f), label=f.parent.name if labelled else None) for f in files]


def predict(model: Classifier, rows: Sequence[Row], batch_size: int, threads: int = 1) -> list[Row]:
    """Fill in prediction and probability; rows whose image cannot be read get an error instead."""
    return [row for batch in predict_batches(model, rows, batch_size, threads) for row in batch]


def predict_batches(model: Classifier, rows: Sequence[Row], batch_size: int, threads: int) -> Iterator[list[Row]]:
    """`rows` filled in, batch by batch, in order. `threads` batches are worked on at a time, each read and
    run through the network on one core (torch's own threads set to one meanwhile): on a CPU, small batches
    side by side go faster than one batch spread over every core, whose threads wait for each other at every
    layer (`benchmarks/serving.py`). Memory holds 2 x `threads` batches at the most, however many rows."""
    batches = (list(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size))
    if threads <= 1:
        yield from map(partial(_predict_batch, model), batches)
        return
    with _torch_threads(1), ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[list[Row]]] = deque()
        for batch in batches:
            pending.append(pool.submit(_predict_batch, model, batch))
            if len(pending) == 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _predict_batch(model: Classifier, batch: list[Row]) -> list[Row]:
    # Read as validation read them: the pixels the model's validation accuracy was measured on.
    for row, answer in zip(batch, model.classify([row.path for row in batch], k=1), strict=True):
        if isinstance(answer, str):
            row.error = answer
        else:
            row.prediction, row.probability = answer[0]["label"], answer[0]["probability"]
    return batch


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Tally:
    """What a prediction run has done so far: images predicted, unreadable, and right against their folder."""

    predicted: int = 0
    unreadable: int = 0
    labelled: int = 0
    correct: int = 0

    def add(self, row: Row) -> None:
        """Count one finished row."""
        if row.error:
            self.unreadable += 1
            return
        self.predicted += 1
        if row.label is not None:
            self.labelled += 1
            self.correct += row.label == row.prediction

    @property
    def accuracy(self) -> float | None:
        """The share of labelled images predicted right; None when no image has a label."""
        return self.correct / self.labelled if self.labelled else None


def predict_to_csv(
    model: Classifier, rows: Sequence[Row], output: Path, batch_size: int, threads: int, model_uri: str = ""
) -> Tally:
    """Predict `rows` into the CSV `output`, written as it goes (bounded memory, whatever the number of
    images), with a progress bar on a terminal.

    The lines go to `<output>.partial`, flushed after every batch, renamed to `output` at the end: `output`
    is never half written. A run that was stopped leaves its `.partial` (and `<output>.partial.model`, the
    model it used); the next run with the same `output`, the same `model_uri` and the same columns keeps
    its lines for the images still in the input and predicts only the others."""
    columns = _columns(rows)
    unfinished = output.with_name(output.name + ".partial")
    used = output.with_name(output.name + ".partial.model")
    same_model = used.is_file() and used.read_text() == model_uri
    wanted = {row.path for row in rows}
    done = {path: row for path, row in _rows_done(unfinished, columns).items() if path in wanted} if same_model else {}
    tally = Tally()
    for row in done.values():
        tally.add(row)
    todo = [row for row in rows if row.path not in done]
    if done:
        log.info("resuming %s: %d image(s) already predicted, %d to go", unfinished, len(done), len(todo))
    output.parent.mkdir(parents=True, exist_ok=True)
    # The kept lines go to a new file that replaces the old one whole: stopped again now, none is lost.
    fresh = unfinished.with_name(unfinished.name + ".tmp")
    with fresh.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(vars(row) for row in done.values())  # a line cut short by the stop is dropped
    used.write_text(model_uri)
    fresh.replace(unfinished)
    with unfinished.open("a", newline="") as f, tqdm(
        total=len(rows), initial=len(rows) - len(todo), desc="predicting", unit="image", disable=None
    ) as progress:  # fmt: skip
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        started = time.perf_counter()
        for batch in predict_batches(model, todo, batch_size, threads):
            writer.writerows(vars(row) for row in batch)
            f.flush()
            for row in batch:
                tally.add(row)
                if row.error:
                    log.warning("could not read %s: %s", row.path, row.error)
            progress.update(len(batch))
    seconds = time.perf_counter() - started
    log.info("read and predicted %d image(s) in %.1f s: %.0f images/s", len(todo), seconds, len(todo) / seconds)
    unfinished.replace(output)
    used.unlink()
    return tally


def _columns(rows: Sequence[Row]) -> list[str]:
    labelled = any(row.label is not None for row in rows)
    return ["path", "prediction", "probability", *(["label"] if labelled else []), "error"]


def _rows_done(unfinished: Path, columns: list[str]) -> dict[str, Row]:
    """The rows an interrupted run wrote to `unfinished`, by path; none when there is no such file or its
    columns differ (it is then written anew). A last line cut short by the interruption is dropped."""
    if not unfinished.is_file():
        return {}
    with unfinished.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != columns:
            return {}
        lines = [line for line in reader if None not in line.values() and None not in line]
    return {
        line["path"]: Row(
            line["path"],
            line.get("label") or None,
            line["prediction"] or None,
            float(line["probability"]) if line["probability"] else None,
            line["error"] or None,
        )
        for line in lines
    }
