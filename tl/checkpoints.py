"""Crash safety: the whole training state, written atomically after every epoch, and found again to resume.

A checkpoint holds everything the epoch loop needs to go on as if it had never stopped: weights,
optimizer and scheduler state, every random generator, the best epoch so far and the history,
plus what run.py needs to rebuild the run (its config and its MLflow run id).
It holds tensors, numbers and strings only, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tl.config import override_key
from tl.errors import TLError
from tl.interrupts import uninterrupted

LAST = Path("checkpoints") / "last.pt"  # inside the run's output folder
RUN_ID = re.compile(r"[0-9a-f]{32}")


class Checkpoint:
    """The last finished epoch's training state at `path`, plus `about` (config, run id) for resuming."""

    def __init__(self, path: str | Path, about: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.about = about or {}

    @uninterrupted()
    def save(self, state: dict[str, Any]) -> None:
        """Write to a temporary file beside `path`, then rename: a crash leaves the old or the new one, whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save({**self.about, **state}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.path)
            _fsync_directory(self.path.parent)  # the rename itself survives a power cut
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """After a run that finished and was logged, the state is no longer needed (the best model is in MLflow)."""
        self.path.unlink(missing_ok=True)
        for partial in self.path.parent.glob(f".{self.path.name}.*.partial"):  # left by a kill -9 mid-write
            partial.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise TLError(f"{path} is not a readable tl checkpoint ({reason}); give a run's {LAST}") from error
    if not isinstance(state, dict) or not {"config", "run_id", "epochs_done"} <= state.keys():
        raise TLError(f"{path} is not a training state to resume (is it a best.pt?); give a run's {LAST}")
    return state


def locate(cfg: DictConfig, output_dir_of: Callable[[str], str]) -> Path:
    """`resume=` as a checkpoint file, a run's output folder, or an MLflow run id (`output_dir_of` finds its folder)."""
    if cfg.get("rerun"):
        raise TLError("rerun= and resume= are both set: rerun starts a new run, resume continues one; choose one")
    return _locate(str(cfg.resume), output_dir_of)


def _locate(resume: str, output_dir_of: Callable[[str], str]) -> Path:
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
        return _locate(output_dir_of(resume), output_dir_of)
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


def resumed_config(resume: str, overrides: list[str], state: dict[str, Any]) -> tuple[DictConfig, dict[str, str]]:
    """The config the checkpoint's run started with (and its group choices), for `resume=`."""
    extra = [o for o in overrides if override_key(o) != "resume"]
    changes = [o for o in extra if override_key(o) not in RESUME_MAY_CHANGE]
    if changes:
        raise TLError(
            f"resume: `{' '.join(changes)}` would change the run being continued; a resume may only change "
            f"{', '.join(RESUME_MAY_CHANGE[1:])}; start a new run for other changes"
        )
    config = OmegaConf.merge(OmegaConf.create(state["config"]), OmegaConf.from_dotlist(extra))
    config.resume, config.rerun = resume, None  # a resumed rerun was tagged as one when it started
    return config, dict(state["choices"])
