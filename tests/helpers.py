"""What several test modules share: tiny image folders, config composition, running the CLI, comparing runs.

Fixtures built on these are in conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# One colour per class, so that even a couple of epochs can learn the task.
CLASS_COLOURS = {"ants": (200, 40, 40), "bees": (40, 200, 40), "wasps": (40, 40, 200)}


def make_image_folder(root: Path, per_class: dict[str, int] | None = None, size: int = 40) -> Path:
    """root/{train,val}/<class>/*.png with RGB, grey, palette and RGBA images."""
    per_class = per_class or {"train": 6, "val": 3}
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "P", "RGBA"]
    for split, count in per_class.items():
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).convert(modes[i % len(modes)]).save(folder / f"{i}.png")
    return root


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """conf/config.yaml composed with `overrides`, as `python run.py` would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


def run_cli(
    *args: str,
    cwd: Path,
    mlflow_uri: str,
    project: Path = ROOT,
    script: str = "run.py",
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python run.py ARGS` (or another script of the project) as a user runs it, logging to `mlflow_uri`,
    with `env` added to this process's environment."""
    env = {**user_env(mlflow_uri), **(env or {})}
    command = [sys.executable, str(project / script), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def user_env(mlflow_uri: str) -> dict[str, str]:
    """This process's environment as a user's shell has it, logging to `mlflow_uri`: without a sweep's
    parent run, nor pytest's PYTEST_CURRENT_TEST, which turns on MLflow's own test-time checks in its
    store (a read-only session that writes fails) and would make a child process behave unlike a user's."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    for name in ("TL_MLFLOW_PARENT_RUN_ID", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    return env


def tiny(image_folder: Path) -> list[str]:
    """Overrides for a run that takes seconds: the folder at 32 px, no loader workers, batches of 6."""
    return [
        "data=image_folder",
        f"data.root={image_folder}",
        "data.image_size=32",
        "data.num_workers=0",
        "batch_size=6",
    ]


def runs(mlflow_uri: str) -> list:
    """Every run of the `tl` experiment in the store."""
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tl")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def assert_same_numbers(ours: dict[str, list[float]], theirs: dict[str, list[float]]) -> None:
    """Metric histories alike, step for step. Within one process a CPU run repeats bit for bit; another
    process may get kernels that round the last bits differently, so the values are compared to 1e-4."""
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


# What add_bad_images writes and the set-up pass must report: (path relative to the root, reason).
BAD_IMAGES = [
    ("train/ants/truncated.png", "truncated"),
    ("train/bees/empty.jpg", "empty file"),
    ("train/wasps/deep.png", "16-bit image (mode I;16): save it as 8-bit RGB"),
    ("val/wasps/notes.png", "not an image"),
]


def add_bad_images(image_folder: Path) -> Path:
    """`image_folder` plus the four BAD_IMAGES and a CMYK JPEG, which is fine."""
    valid_png = (image_folder / "train" / "ants" / "0.png").read_bytes()
    (image_folder / "train" / "ants" / "truncated.png").write_bytes(valid_png[: len(valid_png) // 2])
    (image_folder / "train" / "bees" / "empty.jpg").write_bytes(b"")
    (image_folder / "val" / "wasps" / "notes.png").write_text("not a picture")
    deep = image_folder / "train" / "wasps" / "deep.png"
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(deep)
    assert Image.open(deep).mode == "I;16"
    cmyk = image_folder / "val" / "ants" / "cmyk.jpg"
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).convert("CMYK").save(cmyk)
    assert Image.open(cmyk).mode == "CMYK"
    return image_folder


def log_untrained_model(classes: list[str], image_size: int = 32) -> str:
    """EfficientNet-Lite0 with a new (untrained) head for `classes`, logged as tl logs a run's model to a
    new run of the current store's experiment `t`: its model URI."""
    from dataclasses import asdict

    import torch

    from tl.models.backbones import efficientnet_lite0
    from tl.tracking.tracker import MlflowTracker

    model = efficientnet_lite0(num_classes=len(classes))
    metadata = {"classes": classes, "preprocess": asdict(model.preprocess.at_size(image_size))}
    with MlflowTracker(experiment="t") as tracker:
        tracker.log_model(model.network, torch.randn(2, 3, image_size, image_size), metadata=metadata)
    return f"runs:/{tracker.run_id}/model"
