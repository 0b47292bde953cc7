"""Who wrote a run: a process's identity on its machine, and what becomes of runs whose process died.

MLflow cannot tell a run whose process was killed (SIGKILL, out of memory, a power cut) from one still
running; tl records each run's process (PROCESS_TAG), and the next run or sweep on that machine ends
such runs FAILED. tl/sweeps/studies.py does the same for an Optuna study's trials.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from tl.tracking.runs import ERROR_TAG, PROCESS_TAG

log = logging.getLogger(__name__)


def this_process() -> str:
    """This process as PROCESS_TAG records it: `host:pid`, then (on Linux) `@` and what tells it from a
    process of the same host name and pid elsewhere: the kernel's boot id, its pid namespace (another
    container) and its start time (a pid used again)."""
    return f"{socket.gethostname()}:{os.getpid()}{_identity(os.getpid())}"


def _identity(pid: int) -> str:
    """`@boot/namespace/start` of process `pid` (Linux), "" where /proc does not say; also "" when the
    process is gone."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat(f"/proc/{pid}/ns/pid").st_ino
        # Field 22 of /proc/PID/stat, counted after the command's closing parenthesis (it may hold spaces).
        start = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""
    return f"@{boot}/{namespace}/{start}"


def is_dead(process: str | None) -> bool:
    """Whether `process` (as `this_process` wrote it) is known to have stopped. Only a process of this
    machine and this pid namespace can be looked at; any other may be alive, as far as this one knows."""
    where, _, identity = (process or "").partition("@")
    host, _, pid = where.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    mine = _identity(os.getpid())
    if identity and mine and identity.rsplit("/", 1)[0] != mine[1:].rsplit("/", 1)[0]:
        return False  # another machine (boot) or another container (pid namespace) of the same host name
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, run by another user
    # A process with that pid exists: the same one, unless it started at another time (the pid was reused).
    return bool(identity and mine and _identity(int(pid)) != f"@{identity}")


def end_runs_of_dead_processes(experiment_id: str) -> None:
    """End FAILED the experiment's runs that a process of this machine left RUNNING when it died (SIGKILL,
    out of memory, a power cut): MLflow cannot tell, tl's next run or sweep here can (PROCESS_TAG)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    query = f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}` LIKE '{socket.gethostname()}:%'"
    for run in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        if is_dead(run.data.tags[PROCESS_TAG]):
            log.warning("MLflow run %s was left RUNNING by a process that is gone (%s): ended FAILED",
                        run.info.run_id, run.data.tags[PROCESS_TAG])  # fmt: skip
            end_abandoned(client, run)


def end_abandoned(client: Any, run: Any) -> None:
    """End FAILED a run whose process stopped while it ran, saying so in its `tl.error`."""
    client.set_tag(run.info.run_id, ERROR_TAG, f"its process ({run.data.tags.get(PROCESS_TAG)}) stopped while it ran")
    client.set_terminated(run.info.run_id, "FAILED")
