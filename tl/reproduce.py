"""Reproducing a run: for `rerun=` the config it ran with and what has changed since, for `resume=` the
folder holding its checkpoint, read back from its MLflow run (what tl/tracking.py logged there)."""

from __future__ import annotations

import logging

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tl.config import override_key
from tl.errors import TLError
from tl.manifest import DatasetFingerprint
from tl.models import TransferModel
from tl.provenance import CodeState
from tl.runs import CHOICES_ARTIFACT, CONFIG_ARTIFACT, MANIFEST_ARTIFACT, NO_WEIGHTS, OUTPUT_DIR_TAG, RERUN_OF_TAG

log = logging.getLogger(__name__)


def recorded_config(current: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """For `rerun=RUN_ID`: that run's config as it ran (not today's conf/ defaults) and its group
    choices, with this command's other overrides applied and this command's tracking settings."""
    run_id = current.rerun
    if current.tracking.uri:
        mlflow.set_tracking_uri(current.tracking.uri)
    try:
        config = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFIG_ARTIFACT}"))
        choices = OmegaConf.to_container(
            OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/{CHOICES_ARTIFACT}"))
        )
    except MlflowException as error:
        raise TLError(
            f"rerun={run_id}: no run with a recorded config in {mlflow.get_tracking_uri()} "
            f"({str(error).splitlines()[0]}); give a run id from `mlflow ui` and, if needed, tracking.uri"
        ) from error
    extra = [o for o in overrides if override_key(o) != "rerun"]
    for override in extra:
        key = override_key(override)
        if isinstance(OmegaConf.select(config, key), DictConfig) or key in choices:
            raise TLError(
                f"rerun: `{override}` would swap a whole config group; a rerun keeps the original's "
                f"groups, so change single keys (e.g. {key}.<key>=VALUE), or start a new run without rerun="
            )
    config = OmegaConf.merge(config, OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    config.rerun = run_id
    config.tracking = current.tracking
    return config, choices


def recorded_output_dir(run_id: str, uri: str | None) -> str:
    """The output folder (holding its checkpoint) of an MLflow run, for `resume=RUN_ID`."""
    if uri:
        mlflow.set_tracking_uri(uri)
    try:
        return MlflowClient().get_run(run_id).data.tags[OUTPUT_DIR_TAG]
    except (MlflowException, KeyError) as error:
        raise TLError(
            f"resume={run_id}: no tl run with that id in {mlflow.get_tracking_uri()}; give its checkpoint "
            "or output folder instead, or set tracking.uri to its store"
        ) from error


def warn_of_changes(
    original_run_id: str, code: CodeState, dataset: DatasetFingerprint, model: TransferModel
) -> list[str]:
    """For a rerun, in its (active) MLflow run: tag the original, and warn when code, data or weights
    differ from it; the differences, one line each."""
    mlflow.set_tag(RERUN_OF_TAG, original_run_id)
    original = MlflowClient().get_run(original_run_id).data.tags
    changes = []
    then = (original.get("mlflow.source.git.commit"), original.get("tl.git_diff_sha256"))
    if then != (code.commit, code.diff_sha256):
        changes.append(f"code: {_describe(*then)} then, {_describe(code.commit, code.diff_sha256)} now")
    if original.get("tl.dataset_sha256") != dataset.sha256:
        recorded = mlflow.artifacts.load_dict(f"runs:/{original_run_id}/{MANIFEST_ARTIFACT}")
        files = dataset.changes_from([tuple(f) for f in recorded["files"]])
        shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
        changes.append(f"dataset: {len(files)} file(s) differ: {shown}")
    if original.get("tl.weights_sha256") != (model.weights_sha256 or NO_WEIGHTS):
        changes.append(f"pretrained weights: {original.get('tl.weights')} then, {model.weights} now")
    for change in changes:
        log.warning("rerun of %s differs: %s", original_run_id, change)
    if changes:
        mlflow.set_tag("tl.rerun_differs", "; ".join(changes)[:5000])
    return changes


def _describe(commit: str | None, diff_sha256: str | None) -> str:
    text = f"commit {commit or 'unknown'}"
    return (text + f" with uncommitted changes (patch sha256 {diff_sha256[:12]})") if diff_sha256 else text
