"""Every command of the README runs as written: the training, sweep and prediction commands at small
settings (one epoch, 32 px images), in order, as a newcomer would copy them; the make targets as make
would run them."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow

# Commands the test does not run, and why; any other command of the README must run.
NOT_RUN = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"': "the install: CI's own first step",
    "python run.py +experiment=tutorial_finetune": "downloads the tutorial's images and weights (internet)",
    "python run.py +experiment=tutorial_frozen": "downloads the tutorial's images and weights (internet)",
    "mlflow ui": "a server: tests/test_newcomer.py opens it in a browser",
    "python run.py": "run as written, at full settings, by tests/test_cli.py::test_default_run_reaches_the_promised_"
    "accuracy_and_predicts_unseen_images_alike",
}
SMALL = {"epochs": "1", "data.image_size": "32", "trainer.progress": "false"}


def readme_commands() -> list[str]:
    """The lines of the README's ```bash blocks, without comments."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def small(command: str, folder: str) -> list[str]:
    """The command's arguments with the small settings for the keys it leaves alone, its output in `folder`."""
    args = shlex.split(command)[2:]
    keys = {arg.split("=", 1)[0] for arg in args}
    added = [
        f"{key}={value}" for key, value in SMALL.items() if key not in keys and command.startswith("python run.py")
    ]
    return [*args, *added, f"hydra.run.dir={folder}", f"hydra.sweep.dir={folder}"]


def test_the_readmes_commands_run_as_written(tmp_path):
    commands = readme_commands()
    assert (
        "make run" in commands
        and "make test" in commands
        and "python run.py -m strategy=finetune,frozen lr=1e-3,1e-2" in commands
    )
    skipped = [command for command in commands if command in NOT_RUN]
    assert sorted(skipped) == sorted(NOT_RUN), "a command NOT_RUN names is no longer in the README"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for i, command in enumerate(c for c in commands if c not in NOT_RUN):
        if command.startswith("make "):  # what make would run, without installing: its targets exist
            dry = subprocess.run([*shlex.split(command), "-n"], cwd=ROOT, capture_output=True, text=True)
            assert dry.returncode == 0, f"{command}: {dry.stderr}"
        elif command.startswith(("python run.py", "python predict.py")):
            script = shlex.split(command)[1]
            result = run_cli(*small(command, str(tmp_path / f"out{i}")), cwd=ROOT, mlflow_uri=store, script=script)
            assert result.returncode == 0, f"{command}:\n{result.stderr[-3000:]}"
        else:
            pytest.fail(f"the README's command `{command}` is neither run nor listed in NOT_RUN")
