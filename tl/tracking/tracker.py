"""Everything MLflow for one training: its run, params, metrics, artifacts and model.

The sweep's parent run is in tl/sweeps/parent_run.py; what both share (names, tags, the store) in tl/tracking/runs.py;
reading a run back for rerun= and resume= in tl/tracking/reproduce.py; the logged model's format in
tl/models/logged_model.py.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from tl.core import metrics
from tl.core.checks import check_value
from tl.core.critical_sections import uninterrupted
from tl.core.errors import TLError, first_line
from tl.core.metrics import Predictions
from tl.core.provenance import CodeState
from tl.data.manifest import DatasetFingerprint
from tl.evaluation import reports, uncertainty
from tl.models import logged_model
from tl.models.backbones import Preprocess, TransferModel
from tl.tracking.processes import end_runs_of_dead_processes, this_process
from tl.tracking.reproduce import EffectiveRun, warn_of_changes
from tl.tracking.runs import (
    CHOICES_ARTIFACT,
    CONFIG_ARTIFACT,
    ERROR_TAG,
    MANIFEST_ARTIFACT,
    NO_WEIGHTS,
    OUTPUT_DIR_TAG,
    PROCESS_TAG,
    VAL_PREDICTIONS_ARTIFACT,
    csv_text,
    run_name,
    tag_value,
)
from tl.tracking.stores import use_store
from tl.training.lr_finder import RangeTest
from tl.training.trainer import FitResult

log = logging.getLogger(__name__)


def flatten(config: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """`{"model": {"name": "x"}}` -> `{"model.name": "x"}`; Hydra's `_target_`-style keys are left out."""
    plain = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    flat: dict[str, Any] = {}
    for key, value in plain.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _counts_text(counts: dict[str, int]) -> str:
    return " ".join(f"{name}={n}" for name, n in counts.items())


class MlflowTracker:
    """One MLflow run for one training, nested under the sweep's parent run when there is one.

    Use as a context manager: the run ends FINISHED, KILLED on Ctrl-C, FAILED on any error.
    """

    def __init__(
        self,
        experiment: str = "tl",
        uri: str | None = None,
        overrides: list[str] | None = None,
        parent_run_id: str | None = None,
        sweep_keys: str | None = None,
        register: str | None = None,
        alias: str | None = None,
        fallback: str | None = None,
        run_id: str | None = None,
        optuna_study: str | None = None,
        optuna_storage: str | None = None,
        optuna_trial: str | None = None,
        optuna_study_id: str | None = None,
    ) -> None:
        check_value("tracking.fallback", fallback)
        self.experiment = experiment
        self.uri = uri
        self.parent_run_id = parent_run_id
        self.register = register
        self.alias = alias
        self.fallback = fallback
        self.run_name = run_name(overrides or [], sweep_keys.split(",") if sweep_keys else None)
        self.run_id = run_id  # given: continue that run (resume=)
        # The process writing the run (a later sweep ends the run FAILED if it died), and an Optuna
        # trial's study and number (tl/sweeps/search.py finds the study's runs and tags its best by them).
        trial = {"tl.optuna_study": optuna_study, "tl.optuna_storage": optuna_storage, "tl.optuna_trial": optuna_trial,
                 "tl.optuna_study_id": optuna_study_id}  # fmt: skip
        self.tags = {PROCESS_TAG: this_process()}
        self.tags.update({key: str(value) for key, value in trial.items() if value is not None})

    def __enter__(self) -> MlflowTracker:
        end_runs_of_dead_processes(use_store(self.uri, self.experiment, self.fallback))
        if self.run_id:
            self._check_resumable(self.run_id)
            run = mlflow.start_run(run_id=self.run_id, tags=self.tags)
            if ERROR_TAG in run.data.tags:  # from the attempt that failed; this one may not
                MlflowClient().delete_tag(self.run_id, ERROR_TAG)
        else:
            run = mlflow.start_run(run_name=self.run_name, parent_run_id=self.parent_run_id, tags=self.tags)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) in %s", self.run_id, run.info.run_name, mlflow.get_tracking_uri())
        return self

    @uninterrupted()
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            status = RunStatus.FINISHED
        elif issubclass(exc_type, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
            mlflow.set_tag(ERROR_TAG, tag_value(first_line(exc)))
        mlflow.end_run(RunStatus.to_string(status))

    @staticmethod
    def _check_resumable(run_id: str) -> None:
        try:
            run = MlflowClient().get_run(run_id)
        except MlflowException as error:
            raise TLError(
                f"the checkpoint's MLflow run {run_id} is not in {mlflow.get_tracking_uri()}; resume from the "
                "folder the run started in, or set tracking.uri to its store"
            ) from error
        if run.info.status == "FINISHED":
            raise TLError(f"MLflow run {run_id} has already finished; there is nothing to resume")

    @uninterrupted()
    def log_start(
        self,
        run: EffectiveRun,
        code: CodeState,
        environment: dict[str, str],
        dataset: DatasetFingerprint,
        model: TransferModel,
        lr_test: RangeTest | None = None,
    ) -> None:
        """Before the first epoch: a new run's config and provenance (and, for lr=auto, the range test that
        chose its lr); a resumed run's epochs that a crash left unlogged; for a rerun, what differs from the
        original."""
        if run.resumed:
            self.log_missing_epochs(run.resumed.history)
        else:
            self.log_config(run.config, run.choices, run.hydra)
            self.log_provenance(code, environment, dataset, model)
        if lr_test is not None:
            mlflow.set_tag("tl.lr_found", f"{lr_test.suggestion:.4g} (lr=auto: the range test's steepest descent)")
            mlflow.log_figure(lr_test.figure(), "evaluation/lr_range_test.png")
        if run.config.rerun:
            self.warn_if_changed(run.config.rerun, code, dataset, model)

    @uninterrupted()
    def log_missing_epochs(self, history: list[dict[str, float]]) -> None:
        """On resume: the epochs the checkpoint holds but a crash left unlogged."""
        logged = {metric.step for metric in MlflowClient().get_metric_history(self.run_id, "epoch_seconds")}
        for step, row in enumerate(history, start=1):
            if step not in logged:
                self.log_metrics(row, step)

    @uninterrupted()
    def log_config(self, cfg: DictConfig, choices: dict[str, str], hydra_cfg: DictConfig) -> None:
        """Params: the chosen option of each group and the resolved config, flattened. Tags: the
        command-line overrides. Artifacts: the config as run (what `rerun=` rebuilds), resolved,
        and Hydra's own files."""
        params = {group: option for group, option in choices.items() if not group.startswith("hydra")}
        params.update(flatten(cfg))
        mlflow.log_params({key: "None" if value is None else value for key, value in params.items()})
        mlflow.set_tags(
            {"tl.overrides": " ".join(hydra_cfg.overrides.task), OUTPUT_DIR_TAG: hydra_cfg.runtime.output_dir}
        )
        mlflow.log_text(OmegaConf.to_yaml(cfg), CONFIG_ARTIFACT)
        mlflow.log_text(OmegaConf.to_yaml(OmegaConf.create(choices)), CHOICES_ARTIFACT)
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        if hydra_cfg.output_subdir:  # Hydra's config.yaml, hydra.yaml, overrides.yaml
            mlflow.log_artifacts(str(Path(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir)), "config/hydra")

    @uninterrupted()
    def log_provenance(
        self, code: CodeState, environment: dict[str, str], dataset: DatasetFingerprint, model: TransferModel
    ) -> None:
        """Tags that say what the run was made from; the patch, environment and data manifest as artifacts."""
        tags = {f"tl.env.{key}": value for key, value in environment.items()}
        tags.update(
            {
                "tl.git_dirty": str(code.dirty).lower(),
                "tl.git_diff_sha256": code.diff_sha256,
                "tl.dataset_sha256": dataset.sha256,
                "tl.weights": model.weights,
                "tl.weights_sha256": model.weights_sha256 or NO_WEIGHTS,
            }
        )
        tags.update({f"tl.dataset_counts.{split}": _counts_text(counts) for split, counts in dataset.counts.items()})
        if code.commit:
            tags["mlflow.source.git.commit"] = code.commit
        mlflow.set_tags(tags)
        if code.dirty:
            mlflow.log_text(code.diff, "provenance/uncommitted.patch")
        mlflow.log_dict(environment, "provenance/environment.json")
        manifest = {"sha256": dataset.sha256, "counts": dataset.counts, "files": dataset.files}
        mlflow.log_dict({**manifest, "skipped": dataset.skipped}, MANIFEST_ARTIFACT)
        self._log_dataset_inputs(dataset)
        # Logged as 0 too, so that runs can be compared and filtered on it.
        mlflow.log_metric("data_skipped_images", len(dataset.skipped))
        if dataset.skipped:
            rows = [{"path": path, "reason": reason} for path, reason in dataset.skipped]
            mlflow.log_text(csv_text(rows), "provenance/skipped_images.csv")

    @staticmethod
    def _log_dataset_inputs(dataset: DatasetFingerprint) -> None:
        """The images as the run's MLflow dataset input (the UI's "Dataset" column): named by their folder,
        its digest the first 32 hex digits of `tl.dataset_sha256` (MLflow keeps at most 36 characters)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        source = LocalArtifactDatasetSource(dataset.root or ".")
        images = MetaDataset(source, name=Path(dataset.root).name or "images", digest=dataset.sha256[:32])
        mlflow.log_input(images, context="training and validation")

    @uninterrupted()
    def warn_if_changed(
        self, original_run_id: str, code: CodeState, dataset: DatasetFingerprint, model: TransferModel
    ) -> list[str]:
        """For a rerun: tag the original, and warn when code, data or weights differ from it."""
        return warn_of_changes(original_run_id, code, dataset, model)

    @uninterrupted()
    def log_result(
        self, result: FitResult, model: TransferModel, classes: list[str], preprocess: Preprocess, val_set: Dataset
    ) -> None:
        """The best epoch's metrics as `best_<name>`, its evaluation, its weights and the logged model."""
        names = [*metrics.VALIDATION_METRICS, result.monitor]
        mlflow.log_metrics(
            {f"best_{name}": result.best[name] for name in names} | {"best_epoch": result.best_epoch} | result.stopping
        )
        if result.stopped:
            mlflow.set_tag("tl.stopped_early", tag_value(result.stopped))
        self._log_evaluation(result, classes, preprocess, val_set)
        low, high = self._log_uncertainty(result.best_predictions, classes, val_set)
        about = {"classes": classes, "preprocess": asdict(preprocess), "weights": model.weights, "tta": result.tta}
        checkpoint = {"state_dict": model.network.state_dict(), "best_epoch": result.best_epoch,
                      "best_metrics": result.best, "monitor": result.monitor, **about}  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "best.pt")
            torch.save(checkpoint, path)
            mlflow.log_artifact(str(path), "checkpoints")
        example = torch.stack([val_set[i][0] for i in range(min(2, len(val_set)))])
        self.log_model(model.network, example, metadata=about)
        log.info(
            "run %s: best %s %.4f (epoch %d), val acc %.4f, 95%% interval %.4f-%.4f (n=%d); browse it with "
            "`mlflow ui` (store: %s)", self.run_id, result.monitor, result.best_value, result.best_epoch,
            result.best["val_acc"], low, high, len(result.best_predictions.labels), mlflow.get_tracking_uri(),
        )  # fmt: skip

    def _log_uncertainty(self, predictions: Predictions, classes: list[str], val_set: Dataset) -> tuple[float, float]:
        """95% intervals of the best weights' validation accuracy (Wilson) and macro F1 (bootstrap over
        the images), from the predictions already made; and each image's prediction, which a sweep's
        paired test reads (`evaluation/val_predictions.csv`). Returns the accuracy's interval."""
        labels, predicted = predictions.labels.numpy(), predictions.predicted.numpy()
        correct = predicted == labels
        accuracy = uncertainty.wilson_interval(int(correct.sum()), len(correct))
        f1 = uncertainty.bootstrap_interval(labels, predicted, lambda t, p: uncertainty.macro_f1(t, p, len(classes)))
        mlflow.log_metrics({"best_val_acc_ci_low": accuracy[0], "best_val_acc_ci_high": accuracy[1],
                            "macro_f1_ci_low": f1[0], "macro_f1_ci_high": f1[1]})  # fmt: skip
        root = Path(val_set.root).parent  # the data's root: paths as in the dataset manifest
        rows = [
            {"path": Path(path).relative_to(root).as_posix(), "label": classes[label],
             "predicted": classes[guess], "correct": bool(right)}
            for (path, _), label, guess, right in zip(val_set.samples, labels, predicted, correct, strict=True)
        ]  # fmt: skip
        mlflow.log_text(csv_text(rows), VAL_PREDICTIONS_ARTIFACT)
        return accuracy

    def _log_evaluation(self, result: FitResult, classes: list[str], preprocess: Preprocess, val_set: Dataset) -> None:
        """Confusion matrix, per-class table (and macro averages as metrics), curves, worst errors."""
        predictions = result.best_predictions
        matrix = reports.confusion_matrix(predictions, len(classes))
        rows, macro = reports.per_class_report(matrix, classes)
        mlflow.log_metrics(macro)
        mlflow.log_text(csv_text(rows), "evaluation/per_class.csv")
        figures = {
            "confusion_matrix.png": reports.plot_confusion_matrix(matrix, classes),
            "curves.png": reports.plot_curves(result.history),
            "worst_misclassified.png": reports.plot_worst_misclassified(predictions, val_set, classes, preprocess),
        }
        for name, figure in figures.items():
            # zlib's fastest level: Pillow's default (6) was a visible share of the wrap-up (benchmarks/overhead.py).
            mlflow.log_figure(figure, f"evaluation/{name}", save_kwargs={"pil_kwargs": {"compress_level": 1}})

    @uninterrupted()
    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """One epoch's metrics, at step = the epoch's number."""
        mlflow.log_metrics(values, step=step)

    def log_model(self, network: torch.nn.Module, input_example: torch.Tensor, metadata: dict[str, Any]) -> None:
        """The network as the run's `model` (tl/models/logged_model.py); registered and aliased when configured."""
        info = logged_model.log_model(network, input_example, metadata, registered_model_name=self.register)
        # In a sweep the alias goes to the best job's version when the sweep ends, not to each job's.
        if self.register and self.alias and not self.parent_run_id:
            MlflowClient().set_registered_model_alias(self.register, self.alias, info.registered_model_version)
            log.info("models:/%s@%s -> version %s", self.register, self.alias, info.registered_model_version)
