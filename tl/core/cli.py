"""How the command lines (run.py, predict.py) talk and end: a user's mistake as one line, only tl's lines
on the terminal, and no interpreter teardown once their work is done."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tl.core import critical_sections
from tl.core.errors import Interrupted, JobFailed, find_user_error, first_line

T = TypeVar("T")


def quiet_libraries() -> None:
    """Before a command starts (and MLflow is imported): MLflow leaves its loggers to Hydra's logging config,
    which sends their lines to the log file only (conf/config.yaml), and draws no progress bars of its own
    while tl reads artifacts back; launcher subprocesses inherit both. Python warnings become log records
    (`py.warnings`), which go to the log file too."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.captureWarnings(True)


def exit_without_teardown(status: int = 0) -> None:
    """Exit as `sys.exit` would, minus the interpreter's teardown of every loaded module.

    With torch, timm, MLflow and matplotlib loaded, freeing their objects one by one at exit takes
    1.5-2 s on a 2-core CPU, after the run has already ended and said so. What an exit must do still
    happens, in the interpreter's own order: threads are joined and their exit hooks run (joblib's
    workers are stopped there), then the atexit handlers (MLflow's, a sweep's parent run,
    multiprocessing's, logging's flush); only then does the process end, without the rest. Only for a
    finished command: an error keeps the ordinary exit path.
    """
    # The two steps Py_FinalizeEx takes before it tears modules down; neither has a public name.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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
