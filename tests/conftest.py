"""Shared fixtures: tiny image folders made in a tmp dir, temporary MLflow stores, tl's caches there.

The plain helpers they use, and other test modules share, are in helpers.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.helpers import add_bad_images, make_image_folder
from tests.servers import postgres_server


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One PostgreSQL server for the session (tests/servers.py): its URL; each test creates its own database."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def folder_with_bad_images(image_folder: Path) -> Path:
    """The usual folder plus the four BAD_IMAGES and a CMYK JPEG, which is fine."""
    return add_bad_images(image_folder)
