"""The one exception type for mistakes a user can fix, and how the CLIs print it as one line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from tl.core import critical_sections

T = TypeVar("T")


class TLError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with how to resume in its message (a KeyboardInterrupt: the MLflow run ends KILLED)."""


class JobFailed(CompactHydraException):
    """One job of a sweep failed; Hydra prints its message alone, after the sweep's other jobs have run."""


def first_line(problem: BaseException | str) -> str:
    """The first line of an error's message (its type's name when the message is empty), or of a text: what
    a one-line report, a tag or a CSV cell shows of it."""
    text = str(problem).strip()
    if not text:
        return type(problem).__name__ if isinstance(problem, BaseException) else ""
    return text.splitlines()[0]


def find_user_error(error: BaseException) -> TLError | None:
    """The TLError behind `error`, if any (Hydra's instantiate wraps what a target raises)."""
    while error is not None:
        if isinstance(error, TLError):
            return error
        error = error.__cause__
    return None


def one_line_errors(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """For a Hydra task function: a user mistake exits with status 1 and one logged line, no traceback;
    Ctrl-C or SIGTERM with status 130. In a sweep, a failing job is logged and the other jobs go on
    (unless `sweep_on_failure=stop`); the sweep then exits 1 naming the first failure."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> T:
        log = logging.getLogger("tl")
        try:
            with critical_sections.handled():
                return task(cfg)
        except KeyboardInterrupt as interrupt:
            log.error("error: %s", interrupt if isinstance(interrupt, Interrupted) else "interrupted")
            sys.exit(130)
        except Exception as error:
            user_error = find_user_error(error)
            if not _in_sweep():
                if user_error is None:
                    raise
                log.error("error: %s", user_error)
                sys.exit(1)
            if user_error is None:
                log.exception("job failed")  # a bug: the traceback goes to the job's log
            else:
                log.error("error: %s", user_error)
            if cfg.get("sweep_on_failure", "continue") == "stop":
                sys.exit(1)
            job = HydraConfig.get().job
            reason = first_line(user_error or f"{type(error).__name__}: {first_line(error)}")
            raise JobFailed(f"sweep job {job.num} failed: {reason}") from error

    return wrapper


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
