"""A sweep's parent MLflow run, as a Hydra callback: every job's run nests under it, and it ends
with a summary of the jobs.

Hydra builds the callback for every run, single runs too, before run.py checks the config; so this
module is light at import: MLflow and the plots are imported by the methods that run only in a multirun.
"""

from __future__ import annotations

import atexit
import csv
import functools
import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tl.core.checks import check_value
from tl.core.errors import TLError, first_line
from tl.tracking.processes import end_runs_of_dead_processes, this_process
from tl.tracking.runs import (
    ERROR_TAG,
    FAILED_JOB_TAG,
    PARENT_RUN_ENV,
    PROCESS_TAG,
    SWEEP_KEYS_ENV,
    VAL_PREDICTIONS_ARTIFACT,
    csv_text,
    run_name,
    tag_value,
)
from tl.tracking.stores import use_store

log = logging.getLogger(__name__)


@dataclass
class SweepParentRun(Callback):
    """Hydra callback: one parent MLflow run per multirun; every job's run is nested under it. The settings
    are the `tracking` group's and `monitor`/`mode` (conf/config.yaml, hydra.callbacks)."""

    experiment: str = "tl"
    uri: str | None = None
    register: str | None = None
    alias: str | None = None
    fallback: str | None = None
    monitor: str = "val_acc"
    mode: str = "auto"
    run_id: str | None = field(default=None, init=False)  # the parent run, once created
    swept: list[str] = field(default_factory=list, init=False)  # the keys the sweep varies

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the parent run, and tell the jobs its id and the swept keys (environment variables)."""
        self._check_monitor()
        from mlflow.tracking import MlflowClient

        try:
            experiment_id = use_store(self.uri, self.experiment, self.fallback)
        except TLError as error:  # a server that does not answer or refuses the login: before any job
            sys.exit(f"error: {error}")
        end_runs_of_dead_processes(experiment_id)
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(
            experiment_id,
            run_name=f"sweep {overrides}".strip(),
            tags={"tl.sweep_dir": str(sweep_dir.resolve()), "tl.overrides": overrides, PROCESS_TAG: this_process()},
        )
        self.run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.run_id
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
        swept += list(OmegaConf.select(config, "hydra.sweeper.params") or {})  # e.g. Optuna's search space
        self.swept = swept
        os.environ[SWEEP_KEYS_ENV] = ",".join(swept)
        # A failed job makes Hydra's sweeper raise once all jobs have run, and then on_multirun_end is
        # not called: the parent is summarised and ended FAILED at exit instead, never left RUNNING.
        atexit.register(self._end, "FAILED")
        log.info("MLflow sweep parent run %s", self.run_id)

    def _check_monitor(self) -> None:
        """What picks the sweep's best job, checked before any job or parent run: one line and exit 1, as
        run.py answers a bad value (Hydra only warns about an exception raised in a callback)."""
        try:
            check_value("monitor", self.monitor)
            check_value("mode", self.mode)
        except TLError as error:
            sys.exit(f"error: {error}")  # on stderr, exit status 1 (Hydra would only warn of an exception)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A failed job is listed on the parent, also one that failed before its own MLflow run began.
        Runs in the job's process, whichever launcher started it."""
        parent_run_id = os.environ.get(PARENT_RUN_ENV)
        if job_return.status != JobStatus.FAILED or not parent_run_id:
            return
        from mlflow.tracking import MlflowClient

        # The failed job's exception: Hydra's public `return_value` raises it after writing to stderr, which
        # the job has done already (tests/test_private_apis.py pins where Hydra keeps it).
        error = job_return._return_value  # noqa: SLF001
        reason = first_line(error) if error is not None else "failed"
        swept = os.environ.get(SWEEP_KEYS_ENV, "").split(",")
        job = f"{run_name(list(job_return.overrides or []), swept)}: {reason}"
        MlflowClient().set_tag(parent_run_id, f"{FAILED_JOB_TAG}{config.hydra.job.num}", tag_value(job))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarise the sweep on its parent run and end it FINISHED."""
        self._end("FINISHED")

    def _summarise(self) -> None:
        """On the parent: every job (summary.csv); every configuration with its spread and its test
        against the best one (configurations.csv, comparison.png); the best job tagged; failures listed."""
        from mlflow.tracking import MlflowClient

        from tl.core import metrics
        from tl.evaluation import reports

        client = MlflowClient()
        parent = client.get_run(self.run_id)
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'"
        )
        monitored = f"best_{self.monitor}"
        columns = list(dict.fromkeys([monitored, "best_val_acc"]))  # the monitored metric first
        rows = [
            {
                "run_name": child.info.run_name,
                "run_id": child.info.run_id,
                "status": child.info.status,
                **{column: child.data.metrics.get(column) for column in columns},
                "seconds": round((child.info.end_time - child.info.start_time) / 1000, 1)
                if child.info.end_time
                else None,
                "overrides": child.data.tags.get("tl.overrides", ""),
                "error": child.data.tags.get(ERROR_TAG, ""),
            }
            for child in children
        ]
        failures = {key.removeprefix(FAILED_JOB_TAG): why for key, why in parent.data.tags.items()
                    if key.startswith(FAILED_JOB_TAG)}  # fmt: skip
        if failures:
            client.set_tag(self.run_id, "tl.failed_jobs", str(len(failures)))
            client.log_text(self.run_id, csv_text([{"job": n, "error": why} for n, why in sorted(failures.items())]),
                            "sweep/failures.csv")  # fmt: skip
            log.error("%d sweep job(s) failed; see sweep/failures.csv on MLflow run %s", len(failures), self.run_id)
        way = metrics.direction(self.monitor, self.mode)
        sign = 1 if way == "max" else -1
        # Best first; jobs without the metric (failed) last.
        rows.sort(key=lambda row: (row[monitored] is not None, sign * (row[monitored] or 0)), reverse=True)
        scored = [row for row in rows if row["status"] == "FINISHED" and row[monitored] is not None]
        child_metrics = {child.info.run_id: child.data.metrics for child in children}
        configurations = self._compare(scored, monitored, way, child_metrics) if scored else []
        # The best job: the best one of the best configuration (by its mean over repeats).
        best_runs = set(configurations[0]["run_ids"].split()) if configurations else set()
        best = next((row for row in scored if row["run_id"] in best_runs), None)
        for row in rows:
            row["best"] = row is best
        if best:
            client.set_tag(self.run_id, "tl.best_child", best["run_name"])
            client.set_tag(self.run_id, "tl.best_child_run_id", best["run_id"])
            client.set_tag(self.run_id, "tl.best_by", f"{self.monitor} ({way})")
            client.log_metric(self.run_id, monitored, best[monitored])
            client.set_tag(best["run_id"], "tl.best_in_sweep", "true")
            self._tag_comparison(client, configurations, monitored)
            if self.register and self.alias:
                (version,) = client.search_model_versions(f"name='{self.register}' and run_id='{best['run_id']}'")
                client.set_registered_model_alias(self.register, self.alias, version.version)
                client.set_tag(
                    self.run_id, "tl.alias", f"models:/{self.register}@{self.alias} = version {version.version}"
                )
        if rows:
            client.log_text(self.run_id, csv_text(rows), "sweep/summary.csv")
        if configurations:
            client.log_text(self.run_id, csv_text(configurations), "sweep/configurations.csv")
            figure = reports.plot_sweep(configurations, f"mean_{monitored}")
            client.log_figure(self.run_id, figure, "sweep/comparison.png")

    def _compare(self, scored: list[dict], monitored: str, way: str, child_metrics: dict) -> list[dict]:
        """The finished jobs as configurations (tl/sweeps/comparison.py), best first."""
        import mlflow
        from mlflow.exceptions import MlflowException

        from tl.sweeps import comparison

        @functools.cache
        def correct_of(run_id: str) -> dict[str, bool] | None:
            try:
                text = mlflow.artifacts.load_text(f"runs:/{run_id}/{VAL_PREDICTIONS_ARTIFACT}")
            except MlflowException:
                return None  # a run logged by an earlier tl
            return {row["path"]: row["correct"] == "True" for row in csv.DictReader(io.StringIO(text))}

        def interval(run_id: str) -> tuple[float, float] | None:
            low, high = (child_metrics[run_id].get(f"best_val_acc_ci_{end}") for end in ("low", "high"))
            return (low, high) if self.monitor == "val_acc" and low is not None else None

        jobs = [comparison.Job(row["run_id"], row["overrides"].split(), row[monitored], interval(row["run_id"]))
                for row in scored]  # fmt: skip
        return comparison.compare(jobs, self.swept, way, correct_of, monitored)

    def _tag_comparison(self, client: Any, configurations: list[dict], monitored: str) -> None:
        """Tags that say which configuration is best and which others the sweep cannot tell from it;
        each configuration's mean, spread and test in the log."""
        best = configurations[0]
        tied = [f"{row['configuration']} (p={row['p_value_vs_best_holm']:.3g}, Holm-adjusted)"
                for row in configurations if row["indistinguishable_from_best"]]  # fmt: skip
        client.set_tag(self.run_id, "tl.best_configuration", best["configuration"])
        client.set_tag(self.run_id, "tl.indistinguishable_from_best", tag_value("; ".join(tied)) or "none")
        for row in configurations:
            std = row[f"std_{monitored}"]
            spread = f" sd {std:.4f}" if std is not None else ""
            p_value = row["p_value_vs_best"]
            holm = row["p_value_vs_best_holm"]
            verdict = (f"p={p_value:.3g} against the best (Holm-adjusted {holm:.3g}), {row['test']}"
                       if p_value is not None else row["test"])  # fmt: skip
            log.info("%s: mean %s %.4f%s (n=%d); %s", row["configuration"], monitored, row[f"mean_{monitored}"],
                     spread, row["n"], verdict)  # fmt: skip

    def _end(self, status: str) -> None:
        """Summarise the sweep on its parent run and end that run with `status` (FINISHED or FAILED)."""
        if self.run_id is None:
            return
        from mlflow.tracking import MlflowClient

        try:
            self._summarise()
        finally:
            MlflowClient().set_terminated(self.run_id, status)
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEEP_KEYS_ENV, None)
        self.run_id = None
