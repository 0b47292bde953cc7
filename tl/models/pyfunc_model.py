"""The logged model's Python side, as MLflow runs it: encoded images in, class names and probabilities out.

MLflow stores this file with every model tl logs ("models from code") and runs it when the model is
loaded as a pyfunc (`mlflow.pyfunc.load_model`, `mlflow models serve`), beside the model's two
artifacts: the network as a `torch.export` program and `classifier.json` (class names, preprocessing).
So it imports nothing from tl: torch, torchvision, PIL, pandas and MLflow only, and `archive_check.py`,
which MLflow stores with it (in the model's code folder) and which loads the program only once nothing in
it can run as code. It is also the one implementation of reading an image and of the evaluation transform:
training, validation, `predict.py` and the served model all import them from here, so all read an image
alike.

A request is a DataFrame with one column, `image`: the file's bytes (MLflow's `binary` type, base64 in
JSON). The answer has one row per image: `label`, `probability`, `top_k` (the k most likely classes,
`[{"label", "probability"}]`, k from the `top_k` param, default 5) and `error`, which names what was
wrong with an image that could not be read (its other columns are then empty). When no image of a
request can be read, the request itself is refused (HTTP 400), naming the first problem.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import IO, Any, Protocol

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping

if __package__:  # tl.models.pyfunc_model, part of tl
    from . import archive_check
else:  # the model's own copy, run by MLflow beside the model's copy of archive_check.py (its code folder)
    import archive_check

IMAGE_COLUMN = "image"
DEFAULT_TOP_K = 5
# What one served image may be: larger ones are refused before they are decoded (a 50-megapixel
# photo is 150 MB of RGB, and a small file can claim far more pixels than that: a decompression bomb).
MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 50_000_000


class Preprocessing(Protocol):
    """How a model expects its images (tl.models.backbones.Preprocess, or the model's `classifier.json`)."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: Sequence[float]
    std: Sequence[float]


def load_image(
    source: str | os.PathLike | IO[bytes], min_side: int | None = None, interpolation: str = "bilinear"
) -> Image.Image:
    """The image at `source` (a path or an open binary file) in RGB, as ImageFolder's loader gives it, its
    shorter side scaled down to `min_side` when longer, with `interpolation` (torchvision's name;
    antialiased, as torchvision's Resize of a PIL image). Training, validation, the feature cache,
    prediction and the served model read images through this one function, so a model is validated on
    the pixels it will be given.

    A JPEG is decoded at 1/2, 1/4 or 1/8 scale where that still leaves its shorter side at `min_side`
    or more (libjpeg's DCT scaling, Pillow's `draft`, as `Image.thumbnail` does): the work of a decode
    falls with the pixels it produces, so a 12-megapixel photo read for a 224 px model decodes about
    ten times faster, and the scale-down after it starts from a smaller image."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return load_image(file, min_side, interpolation)
    image = Image.open(source)
    if min_side is not None:
        image.draft("RGB", (min_side, min_side))  # a no-op for other formats
    image = image.convert("RGB")
    if min_side is not None and min(image.size) > min_side:
        scale = min_side / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, pil_modes_mapping[InterpolationMode(interpolation)])
    return image


def eval_transform(preprocess: Preprocessing) -> v2.Compose:
    """Resize and centre crop as the weights expect, then normalise: for validation and for prediction."""
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    return v2.Compose(
        [
            v2.Resize(preprocess.resize_size, interpolation=interpolation),
            v2.CenterCrop(preprocess.input_size),
            *to_normalised_tensor(preprocess),
        ]
    )


def to_normalised_tensor(preprocess: Preprocessing) -> list:
    """A PIL image to a float tensor in [0, 1], normalised by the weights' mean and std."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess.mean, preprocess.std)]


def read_error(error: Exception) -> str:
    """Why an image could not be read, in a few words (for a CSV's or a response's `error`)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image (PNG, JPEG, or another format Pillow reads)"
    if type(error) is ValueError:  # raised by `image_file`, its message written for people
        return str(error)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {text}"


def image_file(value: Any) -> IO[bytes]:
    """An image file as a request gives it (its bytes, or base64 text), checked before it is decoded:
    ValueError naming what is wrong (empty, not base64, too many bytes or pixels)."""
    if isinstance(value, str):  # base64 text that MLflow did not decode (a `string` column)
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error as error:
            raise ValueError(f"not base64 ({error})") from error
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"expected the image file's bytes (base64 in JSON), got {type(value).__name__}")
    if not value:
        raise ValueError("empty (0 bytes)")
    if len(value) > MAX_IMAGE_BYTES:
        raise ValueError(f"too large: {len(value) / 2**20:.1f} MiB, the limit is {MAX_IMAGE_BYTES // 2**20} MiB")
    file = io.BytesIO(value)
    with Image.open(file) as image:  # reads the header only
        if image.width * image.height > MAX_IMAGE_PIXELS:
            limit = f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
            raise ValueError(f"too large: {image.width}x{image.height} pixels, the limit is {limit}")
    file.seek(0)
    return file


def top_k(probabilities: torch.Tensor, classes: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of `probabilities` (N, classes), its k most likely classes, most likely first."""
    values, indices = probabilities.topk(min(k, len(classes)), dim=1)
    return [
        [{"label": classes[i], "probability": p} for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


class RequestError(MlflowException):
    """A request the model cannot answer: HTTP 400 with `reason` as the whole message.

    MLflow's scoring server prefixes the message of an error raised while predicting with the request's
    data (`Failed to predict data '<the DataFrame>'.`), over several lines; the answer keeps only the
    reason, one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)
        self.reason = reason

    def serialize_as_json(self) -> str:
        """The response's body: the error code and the reason."""
        return json.dumps({"error_code": self.error_code, "message": self.reason})


class ImageReader:
    """An image file (a path or an open binary file) as the network's input: read as validation reads it
    (`load_image` at the resize size), then resized, centre-cropped and normalised (`eval_transform`)."""

    def __init__(self, preprocess: Preprocessing) -> None:
        self.preprocess = preprocess
        self.transform = eval_transform(preprocess)

    def __call__(self, source: str | os.PathLike | IO[bytes]) -> torch.Tensor:
        """The network's input (3, input_size, input_size) for this image file."""
        pre = self.preprocess
        return self.transform(load_image(source, pre.resize_size, pre.interpolation))


def class_probabilities(
    network: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, tta: bool
) -> torch.Tensor:
    """Class probabilities (N, classes) of a batch of images; with `tta` (test-time augmentation), the mean of
    those of each image and of its mirror image (flipped left to right). Training's validation and the logged
    model both answer with this, so a model validated with TTA is served with it."""
    probabilities = network(batch).float().softmax(1)
    if tta:
        probabilities = (probabilities + network(batch.flip(-1)).float().softmax(1)) / 2
    return probabilities


class Classifier:
    """The network and what it needs to answer: its class names, preprocessing and test-time augmentation."""

    def __init__(
        self, network: torch.nn.Module, classes: Sequence[str], preprocess: Preprocessing, tta: bool = False
    ) -> None:
        self.network = network
        self.classes = list(classes)
        self.preprocess = preprocess
        self.tta = tta
        self.read = ImageReader(preprocess)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes) for a batch of images as `read` gives them."""
        with torch.inference_mode():
            return class_probabilities(self.network, batch, self.tta)

    def classify(
        self, images: Iterable[Any], k: int, open_image: Callable[[Any], str | IO[bytes]] = lambda image: image
    ) -> list[list[dict[str, Any]] | str]:
        """Per image (a path or an open file, or what `open_image` makes one of): its `k` most likely classes
        (`top_k`), or why it could not be read. The images that can be read go through the network as one
        batch. predict.py and the served model both answer with this."""
        answers: list[list[dict[str, Any]] | str | None] = []
        tensors, readable = [], []
        for index, image in enumerate(images):
            try:
                tensors.append(self.read(open_image(image)))
                readable.append(index)
                answers.append(None)
            # Any error: on a crafted file Pillow raises SyntaxError, struct.error or EOFError too.
            except Exception as error:
                answers.append(read_error(error))
        if tensors:
            tops = top_k(self.probabilities(torch.stack(tensors)), self.classes, k)
            for index, answer in zip(readable, tops, strict=True):
                answers[index] = answer
        return answers


def load_classifier(network_path: str, classifier_json: str) -> Classifier:
    """The classifier from its two artifacts: the torch.export program, loaded only once archive_check.py has
    found nothing in it that torch would run as code (`archive_check.UnsafeProgram` otherwise), and
    classifier.json."""
    with open(classifier_json) as f:
        info = json.load(f)
    network = archive_check.load_program(network_path)
    return Classifier(network, info["classes"], SimpleNamespace(**info["preprocess"]), bool(info.get("tta", False)))


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc: a DataFrame of encoded images in, one answer per image out (see the module docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the network and classifier.json from the model's artifacts: a program that could run code is
        refused (`UnsafeProgram`, a ValueError), so `mlflow.pyfunc.load_model` raises and `mlflow models serve`
        does not start."""
        self.classifier = load_classifier(context.artifacts["network"], context.artifacts["classifier"])

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """One row per image: label, probability, top_k and error."""
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            # MLflow has dropped the columns the signature does not name, so they cannot be listed here.
            raise RequestError(f"no '{IMAGE_COLUMN}' column: send each image file, base64, as '{IMAGE_COLUMN}'")
        if model_input.empty:
            raise RequestError("the request has no images")
        k = int((params or {}).get("top_k", DEFAULT_TOP_K))
        if k < 1:
            raise RequestError(f"top_k={k}: ask for 1 or more classes")
        answers = self.classifier.classify(model_input[IMAGE_COLUMN], k, open_image=image_file)
        if all(isinstance(answer, str) for answer in answers):
            raise RequestError(f"no image in the request could be read (image 0: {answers[0]})")
        rows = [
            {"label": None, "probability": None, "top_k": None, "error": answer}
            if isinstance(answer, str)
            else {"label": answer[0]["label"], "probability": answer[0]["probability"], "top_k": answer, "error": None}
            for answer in answers
        ]
        # object columns: a missing value stays None (JSON null), not pandas' NaN (not JSON at all)
        return pd.DataFrame(rows, columns=["label", "probability", "top_k", "error"], dtype=object)


if not __package__:  # run by MLflow as the model's code (a top-level module), not imported as part of tl
    mlflow.models.set_model(ImageClassifier())
