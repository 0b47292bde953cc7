"""What a run is called and what it holds: its name, the names of tl's tags and artifacts, tables as CSV.

Shared by a training's MLflow run (tl/tracking/tracker.py) and a sweep's parent run
(tl/sweeps/parent_run.py). Light at import (no MLflow): Hydra loads the sweep callback for every run,
before run.py checks the config.
"""

from __future__ import annotations

import csv
import io

from tl.core.checks import override_key

# How a sweep's parent run and swept keys reach its jobs (in this process or in launcher subprocesses).
PARENT_RUN_ENV = "TL_MLFLOW_PARENT_RUN_ID"
SWEEP_KEYS_ENV = "TL_SWEEP_KEYS"
ERROR_TAG = "tl.error"
PROCESS_TAG = "tl.process"  # host:pid of the process writing a run (or running an Optuna trial)
FAILED_JOB_TAG = "tl.failed_job."  # + the job's number, on a sweep's parent run
# Artifacts and tags that rerun= and resume= read back (tl/tracking/reproduce.py).
CONFIG_ARTIFACT = "config/config.yaml"
CHOICES_ARTIFACT = "config/choices.yaml"
MANIFEST_ARTIFACT = "provenance/dataset_manifest.json"
RERUN_OF_TAG = "tl.rerun_of"
OUTPUT_DIR_TAG = "tl.output_dir"
NO_WEIGHTS = "none (random init)"
# Each validation image's prediction by a run's best weights; a sweep's paired test reads it (tl/sweeps/parent_run.py).
VAL_PREDICTIONS_ARTIFACT = "evaluation/val_predictions.csv"
# MLflow refuses a tag value longer than this (its `MAX_TAG_VAL_LENGTH`, 8000; tl keeps a margin below it).
MAX_TAG_LENGTH = 5000


def tag_value(text: str) -> str:
    """`text` cut to what a tag may hold."""
    return text[:MAX_TAG_LENGTH]


def run_name(overrides: list[str], sweep_keys: list[str] | None = None) -> str:
    """A run is named by its command-line overrides; a sweep's job by the swept ones only
    (`strategy=frozen,lr=0.01`), as the parent run holds the rest."""
    if sweep_keys:
        overrides = [o for o in overrides if override_key(o) in sweep_keys]
    return ",".join(overrides) or "defaults"


def csv_text(rows: list[dict]) -> str:
    """`rows` as CSV text, the first row's keys as the header."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()
