"""The command line answers at once: `--help`, `--cfg`, Hydra's errors and every rejected config value
come before torch, torchvision, timm, MLflow or matplotlib is imported (each takes seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "mlflow", "matplotlib")
# run.py as `python run.py ARGS` runs it, then the heavy packages it imported, as the last line on stderr.
# At exit, as run.py may end the process with os._exit after the atexit handlers (tl/core/cli.py).
WRAPPER = f"""
import atexit, runpy, sys
sys.path.insert(0, {str(ROOT)!r})  # as `python run.py` puts the script's folder first
sys.argv = ["run.py", *sys.argv[1:]]
atexit.register(lambda: print("heavy:", sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r}),
                              file=sys.stderr, flush=True))
runpy.run_path({str(ROOT / "run.py")!r}, run_name="__main__")
"""


def run_py(tmp_path: Path, *args: str) -> tuple[int, str, list[str], str]:
    """Exit status, stdout, stderr's lines before the last, and the last (the heavy packages imported)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    *stderr, heavy = done.stderr.strip().splitlines()
    return done.returncode, done.stdout, stderr, heavy


def test_help_is_tls_page_with_its_commands_groups_and_flags_before_anything_heavy_is_imported(tmp_path):
    status, stdout, _, heavy = run_py(tmp_path, "--help")
    assert status == 0 and heavy == "heavy: []"
    assert stdout.startswith("tl: transfer learning experiments")
    for command in ("python run.py -m strategy=finetune,frozen", "rerun=RUN_ID", "resume=", "mlflow ui"):
        assert command in stdout
    assert "strategy: finetune, frozen, gradual, lpft, partial" in stdout  # Hydra's $APP_CONFIG_GROUPS
    assert "+experiment:" in stdout and "--cfg,-c" in stdout  # the presets, Hydra's $FLAGS_HELP


@pytest.mark.parametrize(
    ("args", "status"),
    [(["--cfg", "job"], 0), (["--info"], 0), (["model=nope"], 1), (["no_such_key=1"], 1)],
)
def test_showing_the_config_and_hydras_own_errors_import_nothing_heavy(tmp_path, args, status):
    returned, _, _, heavy = run_py(tmp_path, *args)
    assert returned == status and heavy == "heavy: []"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=-1", "error: lr=-1 is not allowed: lr must be a number > 0, e.g. lr=1e-3"),
        ("trainer.precision=fp8", "error: trainer.precision='fp8' is not allowed: trainer.precision must be one of"),
        ("data.on_bad_image=bogus", "error: data.on_bad_image='bogus' is not allowed"),
        ("monitor=val_f2", "error: monitor='val_f2' is not allowed: monitor must be a metric tl logs each epoch: "),
        ("mode=up", "error: mode='up' is not allowed: mode must be auto, max, min"),
        (
            "tracking.uri=http://admin:hunter2@127.0.0.1:5000",
            "error: tracking.uri=(a URI with a password) is not allowed: tracking.uri must be a URI without a password",
        ),
    ],
)
def test_a_rejected_value_is_one_line_before_anything_heavy_is_imported(tmp_path, override, message):
    status, _, stderr, heavy = run_py(tmp_path, override)
    assert status == 1 and heavy == "heavy: []"
    assert len(stderr) == 1 and message in stderr[0], stderr
    assert "hunter2" not in stderr[0]


@pytest.mark.parametrize("search", [["lr=1e-3,1e-2"], ["hparams_search=optuna"]])
def test_a_sweep_with_an_unknown_monitor_stops_in_one_line_before_any_job_or_parent_run(tmp_path, search):
    status, _, stderr, heavy = run_py(tmp_path, "-m", *search, "monitor=val_f2")
    assert status == 1 and heavy == "heavy: []"
    assert len(stderr) == 1 and "error: monitor='val_f2' is not allowed" in stderr[0], stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()
