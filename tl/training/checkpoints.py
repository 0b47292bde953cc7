"""Crash safety: the whole training state, written atomically after every epoch, and found again to resume.

`TrainingState` is what a checkpoint holds, defined once: everything the epoch loop needs to go on
as if it had never stopped (weights, optimizer and scheduler state, every random generator, the best
epoch so far and the history), plus what `resume=` needs to rebuild the run (its config, group
choices and MLflow run id). Tensors, numbers and strings only: it loads with `weights_only=True`.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tl.core.checks import override_key
from tl.core.critical_sections import uninterrupted
from tl.core.errors import Interrupted, TLError, first_line

LAST = Path("checkpoints") / "last.pt"  # inside the run's output folder
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class TrainingState:
    """The training state after a finished epoch: the epoch loop fills the training part (tl/training/trainer.py),
    `Checkpoint` adds which run it belongs to."""

    epochs_done: int
    network: dict[str, torch.Tensor]  # the weights as they are now
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    grad_scaler: dict[str, Any]
    rng: dict[str, Any]  # rng_states()
    history: list[dict[str, float]]  # one row of metrics per epoch done
    best_epoch: int  # by the monitored metric; 0: none yet
    best_network: dict[str, torch.Tensor]
    best_logits: torch.Tensor | None  # the best weights' validation predictions
    best_labels: torch.Tensor | None
    run_id: str | None = None
    config: str = ""  # the config as run, YAML
    choices: dict[str, str] = field(default_factory=dict)  # each config group's option
    average: dict[str, Any] | None = None  # the weights' moving average (trainer.ema_decay), if any

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for torch.save (not `dataclasses.asdict`, which would deep-copy every tensor)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def atomic_save(content: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash leaves the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        _fsync_directory(path.parent)  # the rename itself survives a power cut
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


class Checkpoint:
    """The last finished epoch's training state at `path`, with `about` (run_id, config, choices) for resuming;
    `resume_from`: the state the training continues from (`resume=`), None for a new run.

    Only the `writer` process (rank 0 under torchrun) writes it. As a context manager around the
    training: removed when the run ends complete and logged; on Ctrl-C, the message says how to resume.
    """

    def __init__(
        self,
        path: str | Path,
        about: dict[str, Any] | None = None,
        writer: bool = True,
        resume_from: TrainingState | None = None,
    ) -> None:
        self.path = Path(path)
        self.about = about or {}
        self.writer = writer
        self.resume_from = resume_from

    def record_run(self, run_id: str | None) -> None:
        """The MLflow run the saved states belong to: the run a `resume=` continues."""
        self.about["run_id"] = run_id

    @uninterrupted()
    def save(self, state: TrainingState) -> None:
        """Write `state` (with `about`) atomically."""
        if self.writer:
            atomic_save(replace(state, **self.about).to_dict(), self.path)

    def remove(self) -> None:
        """After a run that finished and was logged, the state is no longer needed (the best model is in MLflow)."""
        if not self.writer:
            return
        self.path.unlink(missing_ok=True)
        for partial in self.path.parent.glob(f".{self.path.name}.*.partial"):  # left by a kill -9 mid-write
            partial.unlink(missing_ok=True)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.remove()
        elif issubclass(exc_type, KeyboardInterrupt) and self.writer:  # the writer says how to resume
            if not self.path.is_file():
                raise Interrupted("interrupted before the first epoch finished; there is nothing to resume") from exc
            raise Interrupted(
                f"interrupted; the last finished epoch is saved: continue with `python run.py resume={self.path}`"
            ) from exc


def _fsync_directory(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def load(path: Path) -> TrainingState:
    """The training state saved at `path`, read without unpickling code."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TLError(f"{path} is not a readable tl checkpoint ({first_line(error)}); give a run's {LAST}") from error
    if not isinstance(saved, dict) or not {"config", "run_id", "epochs_done"} <= saved.keys():
        raise TLError(f"{path} is not a training state to resume (is it a best.pt?); give a run's {LAST}")
    names = {f.name for f in fields(TrainingState)}
    required = {f.name for f in fields(TrainingState) if f.default is MISSING and f.default_factory is MISSING}
    if not required <= saved.keys():
        raise TLError(f"{path} was written by an earlier version of tl and cannot be resumed; start the run again")
    return TrainingState(**{name: saved[name] for name in names & saved.keys()})


def locate(resume: str, output_dir_of: Callable[[str], str]) -> Path:
    """`resume=` as a checkpoint file, a run's output folder, or an MLflow run id (`output_dir_of` finds its folder).
    (`rerun=` with `resume=` is refused earlier, by the config's checks.)"""
    candidate = Path(resume).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        if (candidate / LAST).is_file():
            return candidate / LAST
        raise TLError(
            f"resume={resume}: {candidate / LAST} does not exist; a run keeps it until it finishes, "
            "so this run finished, or ended before its first epoch did"
        )
    if RUN_ID.fullmatch(resume):
        return locate(output_dir_of(resume), output_dir_of)
    raise TLError(f"resume={resume}: not a checkpoint file, a run's output folder or an MLflow run id")


def rng_states(train_generator: torch.Generator | None) -> dict[str, Any]:
    """Every generator an epoch draws from: Python's, NumPy's, torch's (CPU and CUDA) and the shuffle order's."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        # As a tensor and plain numbers: a NumPy array would not load with weights_only=True.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "train_shuffle": train_generator.get_state() if train_generator is not None else None,
    }


def restore_rng_states(states: dict[str, Any], train_generator: torch.Generator | None) -> None:
    """Set every generator `rng_states` saved back to where it was."""
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if train_generator is not None:
        train_generator.set_state(states["train_shuffle"])


# What a resume may change: where and how visibly it runs, not what it computes.
RESUME_MAY_CHANGE = ("resume", "device", "trainer.device", "trainer.progress", "data.num_workers", "data.recheck",
                     "data.manifest_dir", "data.progress", "tracking.uri", "tracking.fallback")  # fmt: skip


def resumed_config(resume: str, overrides: list[str], state: TrainingState) -> tuple[DictConfig, dict[str, str]]:
    """The config the checkpoint's run started with (and its group choices), for `resume=`."""
    extra = [o for o in overrides if override_key(o) != "resume"]
    changes = [o for o in extra if override_key(o) not in RESUME_MAY_CHANGE]
    if changes:
        raise TLError(
            f"resume: `{' '.join(changes)}` would change the run being continued; a resume may only change "
            f"{', '.join(RESUME_MAY_CHANGE[1:])}; start a new run for other changes"
        )
    config = OmegaConf.merge(OmegaConf.create(state.config), OmegaConf.from_dotlist(extra))
    config.resume, config.rerun = resume, None  # a resumed rerun was tagged as one when it started
    return config, dict(state.choices)
