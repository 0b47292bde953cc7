"""The MLflow UI as a person sees it: `mlflow ui` on a free loopback port, Debian's Chromium driven by
Playwright, and the checks of a sweep's pages (tests/test_newcomer.py).

Chromium is Debian's (apt-get install chromium): Playwright cannot download its own browsers here. The
locators are the text and roles a person reads (a link named after the run, the Artifacts tab, a cell),
found in MLflow 3.x's UI; each failed check raises AssertionError saying what the page lacks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers import free_port

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root, and no background connections: the machine reaches no network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
LOAD_MS = 60_000  # the first page: the UI's scripts and the runs' search
STEP_MS = 15_000  # what a click shows on a page already loaded


def browser_or_skip() -> Path:
    """Chromium's path, once Chromium and Playwright are known to be installed; without them the test
    skips, except in CI (CI set), where it fails."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"Chromium ({CHROMIUM}): apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append('Playwright: pip install -e ".[test]"')
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return CHROMIUM


@contextmanager
def mlflow_ui(backend_store_uri: str, log_path: Path, attempts: int = 3) -> Iterator[str]:
    """`mlflow ui` (this Python's) on the store, on a free loopback port, until the context ends: its URL.

    One worker and no job runner (the GenAI features' background jobs): by default the UI starts 4 web
    workers and 7 job consumers, a dozen processes for 2 cores, and the consumers outlive a stopped UI. It
    runs in a process group of its own, stopped as a whole."""
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", backend_store_uri,
               "--host", "127.0.0.1", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for _ in range(attempts):  # a port found free may be taken before the UI binds it: then another port
        port = free_port()
        with log_path.open("w") as log:
            ui = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=log_path.parent, env=env, start_new_session=True)  # fmt: skip
        url, deadline, up = f"http://127.0.0.1:{port}", time.monotonic() + 120, False
        while not up and ui.poll() is None and time.monotonic() < deadline:
            try:
                up = urllib.request.urlopen(f"{url}/health", timeout=1).status == 200
            except OSError:
                time.sleep(0.3)
        try:
            if up:
                yield url
                return
        finally:
            _stop(ui)
    pytest.fail(f"mlflow ui did not start: {log_path.read_text()[-2000:]}")


def _stop(ui: subprocess.Popen) -> None:
    """The UI's process group ended: SIGTERM, then SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ui.pid, signal.SIGTERM)
    try:
        ui.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


def fresh_folder(folder: Path) -> Path:
    """`folder`, emptied: the screenshots of this check only."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def shown(value: float) -> str:
    """A metric's value as the UI writes it (JavaScript's number to string, in the cases runs log)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_sweep_in_ui(
    page,
    url: str,
    *,
    experiment: str,
    parent: str,
    children: dict[str, dict[str, float]],
    shots: Path,
    runs: tuple[str, ...] = (),
) -> None:
    """What a person checks in the UI at `url` after a sweep, with a screenshot of each page in `shots`:

    - the experiment's training runs list the sweep's parent run, with its children nested under it
      (hidden until the parent's row is expanded), and the other `runs`;
    - a child's page shows its metrics (`children`: each child's run name and metrics, as logged) and
      its evaluation/confusion_matrix.png as an image;
    - the parent's page lists its child runs and shows its sweep/summary.csv as a table, a row per child.

    Raises AssertionError at the first thing missing, after a screenshot of the page then (failed.png)."""
    from playwright.sync_api import expect

    def link(name: str):
        return page.get_by_role("link", name=name, exact=True)

    def see(locator, missing: str, timeout: int = STEP_MS) -> None:
        expect(locator, missing).to_be_visible(timeout=timeout)

    def click(locator, missing: str, timeout: int = STEP_MS) -> None:
        see(locator, missing, timeout)
        locator.click()

    # First-visit tips pop up over the page (and hide the rest from its accessibility tree) when they like:
    # whenever one shows, before a click or a check, it is closed as a person would.
    page.add_locator_handler(page.get_by_role("button", name="Got it", exact=True), lambda tip: tip.first.click())
    try:
        # The experiment, picked from the list of experiments; then its training runs.
        page.goto(f"{url}/#/experiments")
        click(link(experiment), f"the experiments page has no experiment {experiment!r}", LOAD_MS)
        # In the side bar: the experiment may open on its GenAI overview.
        click(link("Training runs"), "the experiment's page has no 'Training runs'", LOAD_MS)
        see(link(parent), f"the experiment's runs do not include the sweep's parent run {parent!r}", LOAD_MS)
        close = page.get_by_role("button", name="Close", exact=True)  # the assistant's panel, beside the runs
        if close.count() == 1 and close.is_visible():
            close.click()
        runs_url = page.url
        for run in runs:
            see(link(run), f"the experiment's runs do not include run {run!r}")
        for child in children:
            expect(link(child), f"child run {child!r} is shown before its parent's row is expanded: it is not "
                                "nested under the sweep's parent run").to_be_hidden()  # fmt: skip
        # The expander (a button without a name) sits in the parent's row; a run without children has none.
        expander = page.get_by_role("row").filter(has=link(parent)).get_by_role("button")
        expect(expander, f"the row of the sweep's parent run {parent!r} has no expander: no child runs are nested "
                         "under it").to_have_count(1)  # fmt: skip
        click(expander, f"the expander of the sweep's parent run {parent!r} cannot be clicked")
        for child in children:
            see(link(child), f"child run {child!r} is not listed under the sweep's parent run once expanded")
        page.screenshot(path=shots / "1_experiment_runs.png", full_page=True)

        # A child's page: its metrics, then its confusion matrix among its artifacts.
        child, metrics = next(iter(children.items()))
        click(link(child), f"child run {child!r} has no link to its page")
        see(page.get_by_role("heading", name=child, exact=True), f"the page of child run {child!r} did not open")
        for metric, value in metrics.items():
            row = page.get_by_role("row").filter(has=link(metric))
            missing = f"the page of child run {child!r} does not show metric {metric} = {shown(value)}"
            expect(row, missing).to_contain_text(shown(value), timeout=STEP_MS)
        page.screenshot(path=shots / "2_child_run.png", full_page=True)
        click(page.get_by_role("tab", name="Artifacts"), f"the page of child run {child!r} has no Artifacts tab")
        click(page.get_by_text("evaluation", exact=True), f"child run {child!r} has no artifact folder evaluation")
        click(page.get_by_text("confusion_matrix.png", exact=True), f"child run {child!r} has no confusion_matrix.png")
        image = page.get_by_role("img", name="evaluation/confusion_matrix.png")  # its alt text: the path
        see(image, f"child run {child!r}: evaluation/confusion_matrix.png is not shown as an image")
        width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
        assert width > 0, f"child run {child!r}: evaluation/confusion_matrix.png is shown as an empty image"
        page.screenshot(path=shots / "3_child_confusion_matrix.png", full_page=True)

        # The parent's page: its child runs, then its sweep summary.
        page.goto(runs_url)
        click(link(parent), f"the experiment's runs do not include the sweep's parent run {parent!r}", LOAD_MS)
        see(page.get_by_text("Child runs", exact=True), "the parent's page has no 'Child runs'", LOAD_MS)
        for child in children:
            see(link(child), f"the parent's page does not list child run {child!r}")
        page.screenshot(path=shots / "4_parent_run.png", full_page=True)
        click(page.get_by_role("tab", name="Artifacts"), "the parent's page has no Artifacts tab")
        click(page.get_by_text("sweep", exact=True), "the parent run has no artifact folder sweep")
        click(page.get_by_text("summary.csv", exact=True), "the parent run has no sweep/summary.csv")
        see(page.get_by_role("columnheader", name="run_name"), "sweep/summary.csv is not shown as a table")
        for child in children:
            see(page.get_by_role("cell", name=child, exact=True), f"sweep/summary.csv has no row for {child!r}")
        page.screenshot(path=shots / "5_parent_sweep_summary.png", full_page=True)
    except Exception:
        page.screenshot(path=shots / "failed.png", full_page=True)
        raise
