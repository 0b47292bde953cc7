"""Shared fixtures: tiny image folders made in a tmp dir, temporary MLflow stores, config composition."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
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


@pytest.fixture(autouse=True)
def feature_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tl's caches (features, downloads) in the test's tmp dir, for this process and any `run.py` it starts."""
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "tl-cache"))
    return tmp_path / "tl-cache"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh sqlite store, used by this process and by any `run.py` it starts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])
