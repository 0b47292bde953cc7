"""Predict with a model that tl logged to MLflow: any model URI, an image file or a folder.

The model carries its class names and evaluation preprocessing in its MLflow metadata, so the
images are transformed exactly as in validation, not re-guessed.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import mlflow
import torch
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image
from tqdm.auto import tqdm

from tl.errors import TLError
from tl.images import load_image
from tl.models import Preprocess
from tl.transforms import eval_transform

log = logging.getLogger(__name__)


@dataclass
class LoggedModel:
    """A model logged by tl, loaded back: the network, its class names and the preprocessing it expects."""

    network: torch.nn.Module
    classes: list[str]
    preprocess: Preprocess


@dataclass
class Row:
    """One input image and what became of it: its label (from its folder), the prediction or the error."""

    path: str
    label: str | None = None
    prediction: str | None = None
    probability: float | None = None
    error: str | None = None


def load_logged_model(model_uri: str, allow_pickle: bool = False) -> LoggedModel:
    """The logged model at `model_uri`, with the metadata tl logged beside it; one-line errors otherwise.

    Loaded only as a `torch.export` program (what tl logs), whose loading runs no code: the model's
    files are fetched and looked at first, and a pickled model (unpickling can run any code that
    whoever logged it put there) is refused unless `allow_pickle`. MLflow is also told not to unpickle
    (MLFLOW_ALLOW_PICKLE_DESERIALIZATION), so it checks that the program's archive holds no pickle.
    """
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        if not allow_pickle:
            _check_loads_without_code(local, model_uri)
        with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": str(allow_pickle).lower()}):
            network = mlflow.pytorch.load_model(str(local), map_location="cpu")
    except (MlflowException, OSError) as error:
        raise TLError(
            f"could not load model_uri={model_uri} from {mlflow.get_tracking_uri()} ({str(error).splitlines()[0]}); "
            "use runs:/<run_id>/model, models:/<name>/<version> or models:/<name>@<alias>, and tracking_uri if needed"
        ) from error
    if "classes" not in metadata or "preprocess" not in metadata:
        raise TLError(f"{model_uri} has no class names or preprocessing in its metadata: was it logged by tl?")
    return LoggedModel(network, list(metadata["classes"]), Preprocess(**metadata["preprocess"]))


def _check_loads_without_code(model_dir: Path, model_uri: str) -> None:
    """A TLError unless the model's files can be loaded without running code from them: MLflow's PyTorch
    flavour puts a model's `code` folder on sys.path, and unpickles (importing the pickle module its
    files name) any `model.pth` in its data folder; a torch.export program needs neither."""
    flavor = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors", {}).get("pytorch") or {}
    data = model_dir / "data"
    if (data / "model.pth").is_file():
        problem = "is a pickled PyTorch model"
    elif flavor.get("code"):
        problem = "carries a code folder, which MLflow would put on the import path"
    elif flavor.get("model_data") != "data" or not (data / "model.pt2").is_file():
        problem = "is not a torch.export model"
    elif any(path.name != "model.pt2" for path in data.iterdir()):
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


def predict(model: LoggedModel, rows: list[Row], batch_size: int) -> list[Row]:
    """Fill in prediction and probability; rows whose image cannot be read get an error instead."""
    transform = eval_transform(model.preprocess)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for batch in tqdm(batches, desc="predicting", unit="batch", disable=None):
        readable, tensors = [], []
        for row in batch:
            try:
                # Read as validation read it: the pixels the model's validation accuracy was measured on.
                pre = model.preprocess
                tensors.append(transform(load_image(str(row.path), pre.resize_size, pre.interpolation)))
                readable.append(row)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                row.error = f"{type(error).__name__}: {error}"
        if not tensors:
            continue
        with torch.no_grad():
            probabilities = model.network(torch.stack(tensors)).softmax(1)
        confidence, index = probabilities.max(1)
        for row, p, i in zip(readable, confidence.tolist(), index.tolist(), strict=True):
            row.prediction, row.probability = model.classes[i], p
    return rows


def write_csv(rows: list[Row], output: Path) -> None:
    """One CSV line per image: path, prediction, probability (label when known) and error."""
    labelled = any(row.label is not None for row in rows)
    columns = ["path", "prediction", "probability", *(["label"] if labelled else []), "error"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(vars(row) for row in rows)


def accuracy(rows: list[Row]) -> float | None:
    """The share of labelled images predicted right; None when no image has a label."""
    scored = [row for row in rows if row.label is not None and row.prediction is not None]
    return sum(row.label == row.prediction for row in scored) / len(scored) if scored else None
