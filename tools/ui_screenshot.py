"""Screenshot of the MLflow UI as a person sees it: the latest sweep's parent run with its children.

    apt-get install chromium && pip install playwright
    python tools/ui_screenshot.py                       # the ./mlflow.db store, experiment tl
    python tools/ui_screenshot.py --out sweep.png --backend-store-uri sqlite:///other.db

Starts `mlflow ui` on a free loopback port, opens the experiment's training runs in headless
Chromium (Debian's, no browser download), expands the sweep's parent row, adds the val accuracy
column, saves the screenshot and stops the UI. Not part of `pytest`: it needs Chromium.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import sync_playwright

# Headless as root, and no background connections: this machine reaches no network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    parser.add_argument("--experiment", default="tl")
    parser.add_argument("--out", type=Path, default=Path("outputs/mlflow_ui_sweep.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--metrics", nargs="+", default=["best_val_acc", "val_acc", "val_loss", "macro_f1"])
    args = parser.parse_args()

    client = MlflowClient(args.backend_store_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.backend_store_uri}: run a sweep first")
    parents = client.search_runs([experiment.experiment_id], "tags.`tl.sweep_dir` != ''", order_by=["start_time DESC"])
    if not parents:
        raise SystemExit("no sweep in this experiment: run `python run.py -m ...` first")
    parent = parents[0]

    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    ui = subprocess.Popen(
        [mlflow_cli, "ui", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", args.backend_store_uri],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1700, "height": 950})
            page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs")
            page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=60_000)
            for label in ("Got it", "Close"):  # first-visit tips and panels cover the table
                for button in page.get_by_role("button", name=label).all():
                    if button.is_visible():
                        button.click()
            # The expander sits in the parent's row; children appear beneath it.
            row = page.get_by_role("row").filter(has_text=parent.info.run_name).first
            row.get_by_role("button").first.click()
            page.wait_for_timeout(1_000)
            # Metric columns: picked in the Columns menu, as a person would.
            page.get_by_role("button", name="Columns", exact=True).click()
            for metric in args.metrics:
                title = page.get_by_text(metric, exact=True).first
                if not title.count():
                    continue  # not logged by these runs
                node = page.locator("[class*='tree-treenode']").filter(has=title).first
                node.locator("[class*='tree-checkbox']").first.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1_500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    print(f"saved {args.out}: sweep {parent.info.run_name!r} with {len(children)} children")


if __name__ == "__main__":
    main()
