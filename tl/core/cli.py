"""How the command lines (run.py, predict.py) talk and end: only tl's lines on the terminal, and no
interpreter teardown once their work is done."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading


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
