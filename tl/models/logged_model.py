"""The trained network as MLflow stores it: a pyfunc that takes image files and answers with class names
(tl/models/pyfunc_model.py, run by MLflow from the model's own files), around a torch.export program, with its
signature, environment and metadata (classes, preprocessing); loadable without tl or timm installed.

The model's folder holds the program as `artifacts/model.pt2`, the class names and preprocessing as
`artifacts/classifier.json`, and the pyfunc's code, `pyfunc_model.py` and `code/archive_check.py` (which checks
the program before torch loads it); its MLmodel has two flavours: `python_function` (images in, answers out)
and `pytorch` (the same program: `mlflow.pytorch.load_model` gives the network, tensors in, logits out, with
torch's own loader, which does not check it).
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import mlflow
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array, Object, Property

from tl.models import archive_check, pyfunc_model

NETWORK_FILE = "model.pt2"
CLASSIFIER_FILE = "classifier.json"

TOP_K = Array(Object([Property("label", "string"), Property("probability", "double")]))
SIGNATURE = ModelSignature(
    # `binary`: MLflow's scoring server base64-decodes the column of a JSON request (dataframe_split or
    # dataframe_records) into the files' bytes. Not required, so that a request without it reaches the
    # model, which names the column it expected in one line; MLflow's own answer repeats the whole request.
    inputs=Schema([ColSpec("binary", pyfunc_model.IMAGE_COLUMN, required=False)]),
    outputs=Schema([
        ColSpec("string", "label", required=False),
        ColSpec("double", "probability", required=False),
        ColSpec(TOP_K, "top_k", required=False),
        ColSpec("string", "error", required=False),
    ]),
    params=ParamSchema([ParamSpec("top_k", "long", pyfunc_model.DEFAULT_TOP_K)]),
)  # fmt: skip


def log_model(
    network: torch.nn.Module,
    input_example: torch.Tensor,
    metadata: dict[str, Any],
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log `network` to the active run as `model` (and a new version of `registered_model_name`).

    `input_example` is a batch of the network's input, to export the program with; it needs 2 images:
    torch.export treats a size-1 dimension as a constant, and the program would then refuse any other
    batch size. `metadata` holds the class names and preprocessing (`classes`, `preprocess`).
    """
    if len(input_example) < 2:
        raise ValueError("input_example needs at least 2 images for a dynamic batch dimension")
    if not {"classes", "preprocess"} <= metadata.keys():
        raise ValueError("metadata needs the class names and the preprocessing: the served model reads them")
    network = network.to("cpu").eval()
    example = input_example[:2].cpu()
    with (
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory() as folder,
        _no_requirements_check(),
        _archive_check_importable(),
    ):
        # torch.export's archive writer warns about shared weights that are already on the CPU.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        # The signature is given; an example would only be run to check it (seconds of a run's wrap-up).
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        program = torch.export.export(network, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
        torch.export.save(program, Path(folder, NETWORK_FILE))
        Path(folder, CLASSIFIER_FILE).write_text(json.dumps(_classifier_info(metadata)))
        return Model.log(
            artifact_path=None,
            name="model",
            flavor=_PyfuncAndPytorch,
            python_model=pyfunc_model.__file__,
            # The pyfunc loads its program with archive_check.py: MLflow copies it to the model's code folder
            # and puts that on the import path before it runs the pyfunc.
            code_paths=[archive_check.__file__],
            artifacts={"network": str(Path(folder, NETWORK_FILE)), "classifier": str(Path(folder, CLASSIFIER_FILE))},
            signature=SIGNATURE,
            # Pins of what this process runs, given rather than inferred: MLflow would infer them
            # by loading the model in a subprocess.
            conda_env=_conda_env(
                mlflow=mlflow.__version__, torch=torch.__version__.split("+")[0],
                torchvision=_version("torchvision"), pillow=_version("PIL"), pandas=_version("pandas"),
            ),
            metadata=metadata,
            registered_model_name=registered_model_name,
            flavor_name="python_function",
        )  # fmt: skip


def _classifier_info(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the pyfunc reads at load: the class names, the preprocessing and test-time augmentation."""
    return {"classes": list(metadata["classes"]), "preprocess": dict(metadata["preprocess"]),
            "tta": bool(metadata.get("tta", False))}  # fmt: skip


class _PyfuncAndPytorch:
    """The flavour module `Model.log` saves the model with: MLflow's pyfunc (models from code, with the
    program and classifier.json as artifacts), plus the `pytorch` flavour pointing at the same program, so
    `mlflow.pytorch.load_model` loads the network itself (the tensor-in form)."""

    @staticmethod
    def save_model(path: str, mlflow_model: Model, **kwargs: Any) -> None:
        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)
        # MLflow's PyTorch flavour loads `model.pt2` from the folder its `model_data` names.
        mlflow_model.add_flavor("pytorch", model_data="artifacts", pytorch_version=str(torch.__version__))
        mlflow_model.save(str(Path(path, "MLmodel")))


def _version(module: str) -> str:
    return __import__(module).__version__.split("+")[0]


@contextlib.contextmanager
def _archive_check_importable() -> Iterator[None]:
    """MLflow runs the pyfunc's file once as it saves it, before the model's code folder is on the import
    path: its `import archive_check` then finds tl's own. Only that name is added to `sys.modules` and taken
    out again (patching the whole dict would also drop every module imported meanwhile, such as the torch
    modules `torch.export` loads, and importing those a second time fails)."""
    added = "archive_check" not in sys.modules
    if added:
        sys.modules["archive_check"] = archive_check
    try:
        yield
    finally:
        if added:
            sys.modules.pop("archive_check", None)


@contextlib.contextmanager
def _no_requirements_check() -> Iterator[None]:
    """MLflow checks a logged model's requirements against the installed distributions, mapping every
    module of every one of them to its package first (a large share of the wrap-up that
    benchmarks/overhead.py times), only to warn on a mismatch. tl's requirements are this process's
    own versions (`_conda_env`), so the check cannot find one; MLflow has no switch for it, so its
    function is replaced for the call (where it exists)."""
    import mlflow.utils.environment as environment

    if not hasattr(environment, "warn_dependency_requirement_mismatches"):
        yield
        return
    with mock.patch.object(environment, "warn_dependency_requirement_mismatches"):
        yield


def _conda_env(**pins: str) -> dict[str, Any]:
    """The logged model's environment: this Python and the given packages at the given versions."""
    pip = [f"{package}=={version}" for package, version in pins.items()]
    return {"name": "mlflow-env", "channels": ["conda-forge"],
            "dependencies": [f"python={platform.python_version()}", "pip", {"pip": pip}]}  # fmt: skip
