"""The trained network as MLflow stores it: a torch.export program with its signature, environment and
metadata (classes, preprocessing), loadable without tl or timm installed."""

from __future__ import annotations

import contextlib
import platform
import warnings
from collections.abc import Iterator
from typing import Any
from unittest import mock

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec


def log_model(
    network: torch.nn.Module,
    input_example: torch.Tensor,
    metadata: dict[str, Any],
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log `network` to the active run as `model` (and a new version of `registered_model_name`).

    The example batch has 2 images: torch.export treats a size-1 dimension as a constant,
    and the exported model would then refuse any other batch size.
    """
    if len(input_example) < 2:
        raise ValueError("input_example needs at least 2 images for a dynamic batch dimension")
    network = network.to("cpu").eval()
    with torch.no_grad():
        output = network(input_example[:2].cpu())
    # Given, not inferred: MLflow would infer it by running the model on the example once more.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )
    with warnings.catch_warnings(), _no_requirements_check():
        # torch.export's archive writer warns about shared weights that are already on the CPU.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        return mlflow.pytorch.log_model(
            network,
            name="model",
            input_example=input_example.cpu().numpy(),
            signature=signature,
            serialization_format="pt2",
            # Pins of what this process runs, given rather than inferred: MLflow would infer them
            # by loading the model in a subprocess.
            conda_env=_conda_env(mlflow=mlflow.__version__, torch=torch.__version__.split("+")[0]),
            metadata=metadata,
            registered_model_name=registered_model_name,
            # MLflow would load the model back and predict the example (seconds a run). The tests
            # load and predict with this format instead (tests/test_tracking.py).
            validate_serving_input=False,
        )


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
