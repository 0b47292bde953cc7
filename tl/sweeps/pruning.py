"""Pruning in a search: a trial's job reports its best monitored value after each epoch to its Optuna trial and
stops when the study's pruner (median, successive halving, Hyperband: hydra.sweeper.pruner) judges the trial hopeless.

The job runs apart from the sweeper (in its process or another), so it opens the study from the storage the
sweeper named (tl/sweeps/search.py puts an in-memory study in a journal file when a pruner is set). A pruned
trial marks itself with the epoch it stopped after; the sweeper then tells the study PRUNED, not a value.
"""

from __future__ import annotations

import os
from typing import Any

from tl.training.stopping import EpochJudge


class TrialPruning:
    """The epoch judge of one trial (tl/training/stopping.py): reports, then asks the pruner. (Not a dataclass:
    Hydra's instantiate would turn a dataclass argument of the trainer into a config.)"""

    def __init__(self, trial: Any, pruner_name: str, epochs: int) -> None:
        self.trial = trial  # an optuna.Trial
        self.pruner_name = pruner_name
        self.epochs = epochs  # the last epoch is reported, never pruned: stopping there saves nothing

    def __call__(self, epoch: int, value: float) -> str | None:
        """Report the best monitored value after epoch `epoch` (what the trial would return now: a dip after
        lpft's probe is not held against it); a reason to stop when the pruner says so."""
        from tl.sweeps.search import PRUNED_ATTR

        self.trial.report(value, epoch)
        if epoch >= self.epochs or not self.trial.should_prune():
            return None
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        return f"pruned: {self.pruner_name} judged trial {self.trial.number} hopeless after epoch {epoch}"


def trial_judge(pruner: Any, epochs: int) -> EpochJudge | None:
    """The judge for this job when it is a trial of a search with a `pruner` (the sweeper's hydra.sweeper.pruner
    setting, a `_target_` config) that runs `epochs`; None for a run outside such a search."""
    from tl.sweeps.search import STORAGE_ENV, STUDY_ENV, TRIAL_ENV

    if not pruner or TRIAL_ENV not in os.environ or os.environ.get(STORAGE_ENV, "memory") == "memory":
        return None
    import optuna
    from hydra.utils import instantiate

    from tl.sweeps import studies

    built = instantiate(pruner)
    storage = studies.open_storage(os.environ[STORAGE_ENV], heartbeat_interval=None)
    study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=storage, pruner=built)
    # Public storage calls: a Trial is made from the storage's id of the trial, which the job finds by number.
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(os.environ[TRIAL_ENV]))
    return TrialPruning(optuna.Trial(study, trial_id), type(built).__name__, epochs)
