"""How the command lines (run.py, predict.py) end once their work is done."""

from __future__ import annotations

import atexit
import logging
import os
import sys


def exit_without_teardown(status: int = 0) -> None:
    """Exit as `sys.exit` would, minus the interpreter's teardown of every loaded module.

    With torch, timm, MLflow and matplotlib loaded, freeing their objects one by one at exit takes
    1.5-2 s on a 2-core CPU, after the run has already ended and said so. What an exit must do still
    happens: the atexit handlers run (MLflow's, a sweep's parent run, multiprocessing's, logging's
    flush), then the process ends without the rest. Only for a finished command: an error keeps the
    ordinary exit path.
    """
    atexit._run_exitfuncs()  # noqa: SLF001 (the handlers sys.exit would run; no public name exists)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
