"""`hydra/sweeper=tl_optuna`: its settings, and the Sweeper Hydra instantiates, which hands the work to
tl/sweeps/search.py. Hydra imports this module for every command, single runs too: it imports nothing heavy."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    """hydra.sweeper.*: hydra-optuna-sweeper's settings, and the heartbeat a shared database study needs."""

    _target_: str = "hydra_plugins.tl_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # Any Optuna sampler: hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    direction: str = "maximize"  # or minimize
    # null: in memory, for this command only. A database URL (sqlite:///optuna.db,
    # postgresql://user@host/db) or journal:PATH (a file) keeps the study: the same command continues it.
    storage: Any = None
    study_name: Any = None
    n_trials: int = 20  # trials this command adds to the study
    n_jobs: int = 1  # trials launched at a time
    max_failure_rate: float = 0.0  # of a batch of n_jobs trials; above it the search stops
    params: Any = None  # the search space: key: choice(...), range(...), interval(...), tag(log, interval(...))
    # Seconds between a running trial's heartbeats in a database storage; a trial whose sweeper died on
    # another machine is failed by the next sweeper after two intervals without one. 0 or null: none.
    heartbeat_interval: Any = 60
    # Stops hopeless trials early: each reports its best monitored value after every epoch. null: none;
    # e.g. {_target_: optuna.pruners.MedianPruner}, SuccessiveHalvingPruner or HyperbandPruner.
    pruner: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="tl_optuna", node=OptunaSweeperConf, provider="tl")


class OptunaSweeper(Sweeper):
    """The Hydra plugin; the search is tl.sweeps.search.OptunaSearch (imported here, only when a search starts)."""

    def __init__(self, **settings: Any) -> None:
        from tl.sweeps.search import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hydra's Sweeper interface: see OptunaSearch.setup."""
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Hydra's Sweeper interface: see OptunaSearch.sweep."""
        return self.search.sweep(arguments)
