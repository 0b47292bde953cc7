"""tl's Optuna sweeper: a search that asks Optuna for trials, launches them as Hydra jobs and tells Optuna
their results, with the study kept in any storage Optuna has (tl/sweeps/studies.py).

Why tl has its own: hydra-optuna-sweeper 1.3.0, the latest release, pins optuna<3, whose database storage
fails with SQLAlchemy 2 (which MLflow needs), and Hydra's port to Optuna 4 is not released. This one keeps
that plugin's settings (hydra.sweeper.storage, study_name, direction, sampler, n_trials, n_jobs,
max_failure_rate, params, with the same search-space grammar) and adds what a stored study needs:
each command adds n_trials trials to the study; trials of a sweeper that died are marked failed; several
sweepers can work on one study; every trial's MLflow run is tagged with its study and trial number; with a
`pruner`, each trial reports its best monitored value after every epoch and stops when the pruner judges it hopeless
(tl/sweeps/pruning.py), and is recorded as PRUNED, in the study and on its MLflow run.
Hydra finds it as a plugin in hydra_plugins/tl_optuna_sweeper (Hydra loads plugins only from there).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tl.core.errors import TLError, first_line
from tl.sweeps import studies
from tl.tracking.processes import end_abandoned, this_process
from tl.tracking.runs import ERROR_TAG, PARENT_RUN_ENV, PROCESS_TAG, tag_value

log = logging.getLogger(__name__)

# How a trial's job learns its study and number (tl/tracking/tracker.py tags its MLflow run with them).
STUDY_ENV, STORAGE_ENV, STUDY_ID_ENV = "TL_OPTUNA_STUDY", "TL_OPTUNA_STORAGE", "TL_OPTUNA_STUDY_ID"
TRIAL_ENV = "TL_OPTUNA_TRIAL"
STUDY_TAG, STORAGE_TAG, TRIAL_TAG = "tl.optuna_study", "tl.optuna_storage", "tl.optuna_trial"
STUDY_ID_TAG = "tl.optuna_study_id"  # what finds a study's runs: machines may name its storage differently
BEST_TAG = "tl.best_in_study"
STATE_TAG = "tl.optuna_state"  # on a trial's run when the study recorded it other than COMPLETE: PRUNED
PRUNED_ATTR = "tl.pruned_at_epoch"  # on a trial the pruner stopped: after which epoch (tl/sweeps/pruning.py)


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Optuna distributions for the sweep overrides (`choice(a,b)`, `range(1,5)`, `interval(0,1)`,
    `tag(log, interval(1e-4,1e-1))`), and the other overrides, which every trial gets as they are.
    The grammar and its meaning are hydra-optuna-sweeper's."""
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        # A later override of a key replaces an earlier one: `strategy=frozen` on the command line fixes
        # what hydra.sweeper.params would search.
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = _distribution(override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def _distribution(override: Override) -> BaseDistribution:
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            step = float(value.step) if value.step else None
            return FloatDistribution(float(value.start), float(value.stop), step=step)
        # range() excludes its stop; Optuna's high is its last value, included
        start, stop, step = int(value.start), int(value.stop), int(value.step)
        return IntDistribution(start, start + (stop - start - 1) // step * step, step=step)
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise TLError(f"{override.input_line}: an Optuna search takes choice(), range() or interval() here")


@dataclass
class OptunaSearch:
    """A Hydra sweeper: `n_trials` trials, `n_jobs` at a time, each asked from the study and told its result.
    The settings are hydra.sweeper's (hydra_plugins/tl_optuna_sweeper)."""

    sampler: Any
    direction: str
    storage: str | None
    study_name: str | None
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    params: dict[str, str] | None
    heartbeat_interval: int | None
    pruner: Any = None
    config: DictConfig | None = field(default=None, init=False)  # the sweep's, from `setup`

    def __post_init__(self) -> None:
        self.params = dict(self.params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the sweep's config and the launcher that runs its jobs (Hydra's Sweeper interface)."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        """Run the search; a problem with the study or its storage ends the sweep with one line."""
        try:
            return self._sweep(arguments)
        except TLError as error:
            _tag_parent({ERROR_TAG: tag_value(str(error))})
            sys.exit(f"error: {error}")  # Hydra would print a traceback for an exception

    def _sweep(self, arguments: list[str]) -> list[JobReturn]:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" line: tl logs the study's
        space, fixed = search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])
        # Hydra instantiates the plugin's settings recursively: sampler and pruner come built, unless given otherwise.
        sampler = _built(self.sampler)
        pruner = _built(self.pruner)
        storage_url = self.storage
        if storage_url is None and pruner is not None:
            # The trials report each epoch to the study from their jobs, which may run in other processes: the
            # study goes to a journal file in the sweep's folder instead of this process's memory.
            Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
            storage_url = f"{studies.JOURNAL_PREFIX}{Path(self.config.hydra.sweep.dir) / 'optuna-journal.log'}"
        storage = studies.open_storage(storage_url, self.heartbeat_interval)
        if self.storage is not None:
            # A stored study is continued by later commands and shared by other sweepers: with the same
            # seed, each of them would propose the same values again.
            sampler.reseed_rng()
        study = studies.open_study(
            storage, self.study_name, self.direction, space, self.config.monitor, sampler, pruner
        )
        location, uid = studies.storage_location(storage_url), studies.study_id(study)
        os.environ.update({STUDY_ENV: study.study_name, STORAGE_ENV: location, STUDY_ID_ENV: uid})
        _tag_parent({STUDY_TAG: study.study_name, STORAGE_TAG: location, STUDY_ID_TAG: uid})
        abandoned = studies.fail_abandoned_trials(study)
        _end_abandoned_runs(uid, {trial.number for trial in abandoned})
        kept = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        log.info("Optuna study %r in %s: %d finished trial(s) kept, %d failed now as abandoned, %d to run",
                 study.study_name, location, kept, len(abandoned), self.n_trials)  # fmt: skip
        returns: list[JobReturn] = []
        while len(returns) < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - len(returns)))]
            for trial in trials:
                trial.set_user_attr(PROCESS_TAG, this_process())
            try:
                with studies.heartbeats(storage, study, trials):
                    batch = self.launcher.launch([_overrides(t, fixed) for t in trials], initial_job_idx=len(returns))
            except BaseException:  # Ctrl-C, or a launcher that failed: the trials did not finish
                for trial in trials:
                    with contextlib.suppress(Exception):  # the error that stopped the jobs is the one to show
                        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            returns += batch
            self._tell(study, trials, batch)
        _tag_best(study, uid)
        return returns

    def _tell(self, study: optuna.Study, trials: list[optuna.Trial], batch: Sequence[JobReturn]) -> None:
        """Tell the study each trial's value, or that it failed; stop when more failed than max_failure_rate."""
        failed = 0
        # As stored now: a trial's jobs may have marked it pruned (optuna.Trial.user_attrs is a cached copy).
        stored = {t.number: t for t in study.get_trials(deepcopy=False)}
        for trial, job in zip(trials, batch, strict=True):
            value = job.return_value if job.status == JobStatus.COMPLETED else None
            scored = isinstance(value, (int, float)) and math.isfinite(value)  # a diverged run returns nan
            pruned_at = stored[trial.number].user_attrs.get(PRUNED_ATTR) if scored else None
            if pruned_at is not None:
                # Optuna keeps a pruned trial's last reported value; its run keeps its best epoch's weights.
                told = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                log.info("trial %d pruned after epoch %d", trial.number, pruned_at)
                _tag_trial_run(study, trial.number, {STATE_TAG: "PRUNED"})
            elif scored:
                told = study.tell(trial, float(value), skip_if_finished=True)
            else:
                told = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                failed += 1
                log.warning("trial %d failed: %s", trial.number, _failure(job))
            if scored and told.state == TrialState.FAIL:
                # Failed by another sweeper meanwhile (it found the trial's heartbeat stale): its value is lost.
                log.warning("trial %d had been failed by another sweeper before it ended; its value %s is not kept",
                            trial.number, value)  # fmt: skip
        if failed / len(batch) > self.max_failure_rate:
            for job in batch:
                job.return_value  # noqa: B018 (JobReturn raises the failed job's error, with its traceback)


def _failure(job: JobReturn) -> str:
    """Why a job gave no score, in one line: its error, or the value it returned."""
    try:
        value = job.return_value  # JobReturn raises the failed job's error
    except Exception as error:
        return first_line(error)
    return f"it returned {value!r}, not a finite number"


def _built(setting: Any) -> Any:
    """A sampler or pruner setting as an object: built by Hydra already, or a `_target_` config, or None."""
    return (
        setting
        if setting is None or isinstance(setting, (optuna.samplers.BaseSampler, optuna.pruners.BasePruner))
        else instantiate(setting)
    )


def _overrides(trial: optuna.Trial, fixed: list[str]) -> list[str]:
    """The job's overrides: the trial's values, the fixed ones, and its trial number for its MLflow run."""
    return [*(f"{key}={value}" for key, value in trial.params.items()), *fixed,
            f"+hydra.job.env_set.{TRIAL_ENV}={trial.number}"]  # fmt: skip


def _tag_parent(tags: dict[str, str]) -> None:
    """Tags on the sweep's parent MLflow run (tl/sweeps/parent_run.py), when there is one."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(parent, key, value)


def _study_runs(client: Any, uid: str, extra: str = "") -> list:
    """The MLflow runs of the study (trials and sweeps) in the parent run's experiment."""
    experiment_id = client.get_run(os.environ[PARENT_RUN_ENV]).info.experiment_id
    query = f"tags.`{STUDY_ID_TAG}` = '{uid}'{extra}"  # a hex uuid: nothing to escape
    return client.search_runs([experiment_id], filter_string=query, max_results=50000)


def _end_abandoned_runs(uid: str, abandoned_trials: set[int]) -> None:
    """End FAILED the study's MLflow runs still RUNNING whose trial was failed as abandoned (a sweeper whose
    heartbeats stopped on another host). Runs of a dead process of this machine (its trials' runs, its
    parent run) the sweep callback has already ended, before the sweep began (processes.end_runs_of_dead_processes)."""
    if not os.environ.get(PARENT_RUN_ENV):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for run in _study_runs(client, uid, " and attributes.status = 'RUNNING'"):
        trial = run.data.tags.get(TRIAL_TAG, "")
        if trial.isdigit() and int(trial) in abandoned_trials:
            end_abandoned(client, run)


def _tag_trial_run(study: optuna.Study, number: int, tags: dict[str, str]) -> None:
    """Tags on the MLflow run of trial `number` of `study`, when the sweep has a parent run."""
    if not os.environ.get(PARENT_RUN_ENV):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for run in _study_runs(client, studies.study_id(study), f" and tags.`{TRIAL_TAG}` = '{number}'"):
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)


def _tag_best(study: optuna.Study, uid: str) -> None:
    """Log the study's best trial so far, and tag its MLflow run (and only it) as the study's best."""
    try:
        best = study.best_trial
    except ValueError:
        log.warning("study %r has no finished trial yet", study.study_name)
        return
    log.info("best trial of study %r so far: #%d, %s, value %.4f", study.study_name, best.number,
             " ".join(f"{k}={v}" for k, v in best.params.items()), best.value)  # fmt: skip
    if not os.environ.get(PARENT_RUN_ENV):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for run in _study_runs(client, uid):
        is_best = run.data.tags.get(TRIAL_TAG) == str(best.number)
        if is_best:
            client.set_tag(run.info.run_id, BEST_TAG, "true")
            _tag_parent({"tl.study_best_trial": str(best.number), "tl.study_best_run_id": run.info.run_id})
        elif BEST_TAG in run.data.tags:
            client.delete_tag(run.info.run_id, BEST_TAG)
