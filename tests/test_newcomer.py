"""The newcomer's path, end to end: a run and a 2x2 sweep with `python run.py`, then `mlflow ui` on their
store, read in a browser (headless Chromium) as a person reads it. Screenshots: outputs/ui/.

The page checks are tests/mlflow_ui.py's; the last tests take the sweep's children away (deleted, or no
longer nested under the parent) and see the same checks fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, make_image_folder, run_cli, tiny
from tests.mlflow_ui import CHROMIUM_FLAGS, browser_or_skip, check_sweep_in_ui, fresh_folder, mlflow_ui

# xdist_group: its tests share module fixtures (a trained run, a server, a browser): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("newcomer")]

SHOTS = ROOT / "outputs" / "ui"
SWEEP = ["-m", "strategy=finetune,frozen", "lr=1e-3,1e-2"]
CHILDREN = [f"strategy={s},lr={lr}" for s in ("finetune", "frozen") for lr in ("0.001", "0.01")]
CHILD_METRICS = ("best_val_acc", "val_acc")  # what a child's page must show, as logged


@dataclass
class Store:
    """The newcomer's MLflow store after a run and a sweep, with what the UI should show of them."""

    uri: str
    folder: Path
    run: str  # the single run's name
    parent: str  # the sweep's parent run: its name and id
    parent_id: str
    children: dict[str, dict[str, float]]  # each child's name: its CHILD_METRICS
    child_ids: list[str]


@pytest.fixture(scope="module")
def chromium() -> Path:
    return browser_or_skip()


@pytest.fixture(scope="module")
def store(chromium, tmp_path_factory) -> Store:
    """`python run.py` and `python run.py -m strategy=finetune,frozen lr=1e-3,1e-2` in a fresh folder, small
    (tiny images, 1 epoch), logging to a SQLite store there."""
    folder = tmp_path_factory.mktemp("newcomer")
    small = [*tiny(make_image_folder(folder / "data")), "epochs=1"]
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {"TL_CACHE_DIR": str(folder / "tl-cache")}
    for args in (small, [*SWEEP, *small]):
        result = run_cli(*args, f"tracking.uri={uri}", cwd=folder, mlflow_uri=uri, env=env)
        assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tl").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in children}
    (parent,) = [r for r in runs if r.info.run_id == parent_id]
    (single,) = [r for r in runs if r.info.run_id != parent_id and r not in children]
    assert sorted(r.info.run_name for r in children) == sorted(CHILDREN)
    return Store(
        uri=uri,
        folder=folder,
        run=single.info.run_name,
        parent=parent.info.run_name,
        parent_id=parent_id,
        children={c.info.run_name: {m: c.data.metrics[m] for m in CHILD_METRICS} for c in children},
        child_ids=[c.info.run_id for c in children],
    )


@pytest.fixture(scope="module")
def ui(store) -> Iterator[str]:
    """`mlflow ui --backend-store-uri sqlite:///...` on the newcomer's store: its URL."""
    with mlflow_ui(store.uri, store.folder / "mlflow-ui.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A new page in a fresh browser profile: no UI state (expanded rows, closed panels) from another test."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    yield context.new_page()
    context.close()


def test_the_newcomer_sees_the_run_and_the_sweep_with_its_children_in_the_mlflow_ui(store, ui, page):
    check_sweep_in_ui(page, ui, experiment="tl", parent=store.parent, children=store.children, runs=(store.run,),
                      shots=fresh_folder(SHOTS / "newcomer"))  # fmt: skip


@pytest.mark.parametrize(
    ("way", "failure"),
    [
        ("deleted", "has no expander: no child runs are nested under it"),
        ("detached", "is shown before its parent's row is expanded: it is not nested"),
    ],
    ids=["deleted", "detached"],
)
def test_the_check_fails_when_the_sweeps_parent_has_no_children(store, ui, page, way, failure):
    client = MlflowClient(store.uri)
    for child in store.child_ids:
        if way == "deleted":
            client.delete_run(child)
        else:
            client.delete_tag(child, "mlflow.parentRunId")
    try:
        with pytest.raises(AssertionError, match=failure):
            check_sweep_in_ui(page, ui, experiment="tl", parent=store.parent, children=store.children,
                              shots=fresh_folder(SHOTS / f"children_{way}"))  # fmt: skip
    finally:  # the store as the sweep left it, for any test after this one
        for child in store.child_ids:
            if way == "deleted":
                client.restore_run(child)
            else:
                client.set_tag(child, "mlflow.parentRunId", store.parent_id)
