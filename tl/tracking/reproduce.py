"""The run as it was: the config a run trains with, fresh or read back for `rerun=` (the config it ran
with, and what has changed since) and `resume=` (its checkpoint, found from its MLflow run, folder or file).

What tl/tracking/tracker.py logged to a run is read back here; the checkpoint itself is tl/training/checkpoints.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from hydra.utils import instantiate
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tl.core.checks import override_key
from tl.core.errors import TLError, first_line
from tl.core.provenance import CodeState
from tl.data.manifest import DatasetFingerprint
from tl.models.backbones import TransferModel
from tl.tracking import allowlist
from tl.tracking.runs import (
    CHOICES_ARTIFACT,
    CONFIG_ARTIFACT,
    MANIFEST_ARTIFACT,
    NO_WEIGHTS,
    OUTPUT_DIR_TAG,
    RERUN_OF_TAG,
    tag_value,
)
from tl.tracking.stores import refuse_password
from tl.training import checkpoints
from tl.training.checkpoints import Checkpoint, TrainingState

if TYPE_CHECKING:
    from tl.tracking.tracker import MlflowTracker

log = logging.getLogger(__name__)

# Where the modules that conf/'s `_target_`s named before tl/ became layered packages live now: a run
# recorded then still reruns and resumes. What a target is mapped to must still be offered by conf/
# (the allow-list checks the result), so this table cannot widen what a recorded config may run.
MOVED_MODULES = {
    "tl.models": "tl.models.backbones",
    "tl.data": "tl.data.folders",
    "tl.strategies": "tl.training.strategies",
    "tl.schedulers": "tl.training.schedulers",
    "tl.trainer": "tl.training.trainer",
    "tl.tracking": "tl.tracking.tracker",
}


@dataclass
class EffectiveRun:
    """The config a run trains with, and where it came from: this command, `rerun=` or `resume=`."""

    config: DictConfig  # for rerun= and resume=, the recorded one (with this command's allowed changes)
    choices: dict[str, str]  # each config group's option
    overrides: list[str]  # this command's
    hydra: DictConfig  # Hydra's runtime config of this process: output folder, its own files
    checkpoint_path: Path  # where the training state is saved after each epoch
    resumed: TrainingState | None = None  # for resume=: the state to continue from

    @property
    def run_id(self) -> str | None:
        """The MLflow run to continue (resume=), or None for a new one."""
        return self.resumed.run_id if self.resumed else None

    def tracker(self) -> MlflowTracker:
        """The run's MLflow tracker (tracking: in the config): a new run, or for resume= the one it continues."""
        return instantiate(self.config.tracking, overrides=self.overrides, run_id=self.run_id)

    def checkpoint(self, writer: bool = True) -> Checkpoint:
        """The run's checkpoint: what a resume continues from, and where each epoch is saved with this
        config (and the MLflow run, `Checkpoint.record_run`), for a later `resume=`."""
        about = {"config": OmegaConf.to_yaml(self.config), "choices": self.choices}
        return Checkpoint(self.checkpoint_path, about, writer, resume_from=self.resumed)


def effective_run(cfg: DictConfig, hydra: DictConfig) -> EffectiveRun:
    """This command's config, or for `rerun=`/`resume=` the recorded one: what the run trains with."""
    overrides, choices = list(hydra.overrides.task), dict(hydra.runtime.choices)
    checkpoint_path = Path(hydra.runtime.output_dir, checkpoints.LAST)
    refuse_password(cfg.tracking.uri or mlflow.get_tracking_uri())  # before any message names the store
    if cfg.resume:  # the run as it started, continued after its last finished epoch
        checkpoint_path = checkpoints.locate(
            str(cfg.resume), lambda run_id: recorded_output_dir(run_id, cfg.tracking.uri)
        )
        resumed = checkpoints.load(checkpoint_path)
        config, choices = checkpoints.resumed_config(cfg.resume, overrides, resumed)
        # This command's store, as for rerun=: a recorded URI could send the login to another host.
        config.tracking.uri, config.tracking.fallback = cfg.tracking.uri, cfg.tracking.fallback
        moved_targets_updated(config)
        allowlist.check(config, allowlist.offered(*allowlist.project_config_dirs(hydra)), f"resume={cfg.resume}")
        return EffectiveRun(config, choices, overrides, hydra, checkpoint_path, resumed)
    if cfg.rerun:  # the original run's recorded config, not today's conf/ defaults
        run_id = cfg.rerun
        cfg, choices = recorded_config(cfg, overrides)
        moved_targets_updated(cfg)
        allowlist.check(cfg, allowlist.offered(*allowlist.project_config_dirs(hydra)), f"rerun={run_id}")
    return EffectiveRun(cfg, choices, overrides, hydra, checkpoint_path)


def moved_targets_updated(config: DictConfig) -> None:
    """Point each `_target_` of a recorded config that names a module by its old place (MOVED_MODULES) at
    that module's new place, in place."""
    for _, node in config.items_ex(resolve=False):
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        module, _, name = target.rpartition(".") if isinstance(target, str) else ("", "", "")
        if module in MOVED_MODULES:
            node._target_ = f"{MOVED_MODULES[module]}.{name}"


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
            f"({first_line(error)}); give a run id from `mlflow ui` and, if needed, tracking.uri"
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
        try:
            recorded = mlflow.artifacts.load_dict(f"runs:/{original_run_id}/{MANIFEST_ARTIFACT}")
        except (MlflowException, OSError):  # a run logged without it (by hand, or its artifacts removed)
            changes.append(f"dataset: its fingerprint differs, and the original has no {MANIFEST_ARTIFACT}")
        else:
            files = dataset.changes_from([tuple(f) for f in recorded["files"]])
            shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
            changes.append(f"dataset: {len(files)} file(s) differ: {shown}")
    if original.get("tl.weights_sha256") != (model.weights_sha256 or NO_WEIGHTS):
        changes.append(f"pretrained weights: {original.get('tl.weights')} then, {model.weights} now")
    for change in changes:
        log.warning("rerun of %s differs: %s", original_run_id, change)
    if changes:
        mlflow.set_tag("tl.rerun_differs", tag_value("; ".join(changes)))
    return changes


def _describe(commit: str | None, diff_sha256: str | None) -> str:
    text = f"commit {commit or 'unknown'}"
    return (text + f" with uncommitted changes (patch sha256 {diff_sha256[:12]})") if diff_sha256 else text
