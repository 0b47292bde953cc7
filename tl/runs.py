"""What a training's MLflow run (tl/tracking.py) and a sweep's parent run (tl/sweep.py) share.

How runs are named and tagged, which store they log to, tables as CSV text. Light at import:
MLflow and urllib are imported by `use_store`, when a run starts, so that loading the sweep callback
(which Hydra does for every run, before run.py checks the config) costs nothing.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tl.config import override_key
from tl.errors import TLError

log = logging.getLogger(__name__)

# How a sweep's parent run and swept keys reach its jobs (in this process or in launcher subprocesses).
PARENT_RUN_ENV = "TL_MLFLOW_PARENT_RUN_ID"
SWEEP_KEYS_ENV = "TL_SWEEP_KEYS"
ERROR_TAG = "tl.error"
PROCESS_TAG = "tl.process"  # host:pid of the process writing a run (or running an Optuna trial)
FAILED_JOB_TAG = "tl.failed_job."  # + the job's number, on a sweep's parent run
# Artifacts and tags that rerun= and resume= read back (tl/reproduce.py).
CONFIG_ARTIFACT = "config/config.yaml"
CHOICES_ARTIFACT = "config/choices.yaml"
MANIFEST_ARTIFACT = "provenance/dataset_manifest.json"
RERUN_OF_TAG = "tl.rerun_of"
OUTPUT_DIR_TAG = "tl.output_dir"
NO_WEIGHTS = "none (random init)"
# Each validation image's prediction by a run's best weights; a sweep's paired test reads it (tl/sweep.py).
VAL_PREDICTIONS_ARTIFACT = "evaluation/val_predictions.csv"
LOCAL_STORE = "sqlite:///mlflow.db"  # tracking.fallback=local; also MLflow's default store
# Run in a child process: the store this process will open (MLflow resolves `uri or its default` alike
# in both, from the same environment and folder), created if it is new, under the store's lock.
CREATE_STORE = """import fcntl, sys, mlflow
with open(sys.argv[2], "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    mlflow.MlflowClient(sys.argv[1] or mlflow.get_tracking_uri()).search_experiments()
"""


def run_name(overrides: list[str], sweep_keys: list[str] | None = None) -> str:
    """A run is named by its command-line overrides; a sweep's job by the swept ones only
    (`strategy=frozen,lr=0.01`), as the parent run holds the rest."""
    if sweep_keys:
        overrides = [o for o in overrides if override_key(o) in sweep_keys]
    return ",".join(overrides) or "defaults"


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


def csv_text(rows: list[dict]) -> str:
    """`rows` as CSV text, the first row's keys as the header."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def use_store(uri: str | None, experiment: str, fallback: str | None = None) -> str:
    """Point MLflow at the store (checked now, before any training) and the experiment; its id."""
    import mlflow  # here, not at import: see the module docstring

    # With no uri, MLflow's own default applies: MLFLOW_TRACKING_URI, else ./mlflow.db (sqlite),
    # the store that a plain `mlflow ui` opens in the same folder.
    wanted = uri or mlflow.get_tracking_uri()
    refuse_password(wanted)
    problem = _unreachable(wanted)
    if problem and fallback == "local":
        log.warning("the MLflow tracking server %s does not answer (%s); logging to %s instead", wanted, problem,
                    LOCAL_STORE)  # fmt: skip
        uri = LOCAL_STORE
    elif problem:
        raise TLError(
            f"the MLflow tracking server {wanted} does not answer ({problem}); start it, point tracking.uri "
            "(or MLFLOW_TRACKING_URI) at a running server or a local store such as sqlite:///mlflow.db, "
            "or set tracking.fallback=local"
        )
    if uri:
        mlflow.set_tracking_uri(uri)
    path = _sqlite_path(uri or mlflow.get_tracking_uri())
    from mlflow.exceptions import MlflowException

    try:
        with _store_lock(path) if path and os.name != "nt" else contextlib.nullcontext():
            return mlflow.set_experiment(experiment).experiment_id  # creates a new store's tables
    except MlflowException as error:
        if error.get_http_status_code() not in (401, 403):
            raise
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise TLError(
            f"the MLflow tracking server {wanted} refused "
            f"{f'the credentials of user {who}' if who else 'a request without credentials'} "
            f"(HTTP {error.get_http_status_code()}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(or MLFLOW_TRACKING_TOKEN) to an account that may use the experiment"
        ) from None  # the server's reply, not the request, in any traceback


def refuse_password(uri: str | None) -> None:
    """A TLError, which does not echo it, if the tracking URI carries a password (`https://user:secret@host`):
    tl logs and prints its tracking URI, and the password would go with it."""
    if uri and urlsplit(uri).password is not None:
        raise TLError(
            "the tracking URI has a password in it, which would be logged and printed with every run; give it "
            "in MLFLOW_TRACKING_PASSWORD (with MLFLOW_TRACKING_USERNAME), or a token in MLFLOW_TRACKING_TOKEN"
        )


def _unreachable(uri: str) -> str | None:
    """Why a tracking server does not answer (found now, before training, not after it); None if it does."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error  # here: urllib.request pulls in ssl and email, which a local store never needs
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10)
    except urllib.error.HTTPError:
        return None  # it answers, if only to ask for a login: the next request says what it refuses
    except OSError as error:
        return str(error)
    return None


def create_store_in_background(uri: str | None) -> subprocess.Popen | None:
    """Start creating a new local MLflow store (a SQLite file) in a child process, while this one
    loads torch and the rest on one core: MLflow creates a database by running each of its schema
    migrations (benchmarks/overhead.py: run start), once per store, so a user's first run paid it. The child creates
    it holding the store's lock, which `use_store` takes too: a run that opens the store meanwhile
    waits for the child and then finds its tables (MLflow's tracking store takes no lock of its own,
    and two processes migrating one new database at once fail). Nothing starts when the store exists
    or is not a SQLite file, nor on Windows (no flock). The child runs in its own session: a Ctrl-C
    meant for the run does not stop it halfway through a migration."""
    path = _sqlite_path(uri or os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE)
    if os.name == "nt" or path is None or path.exists() or (not uri and Path("mlruns").is_dir()):
        return None  # (./mlruns makes MLflow's default a file store)
    return subprocess.Popen(
        [sys.executable, "-c", CREATE_STORE, uri or "", str(_lock_path(path))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


@contextlib.contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    """Held while a SQLite store is opened (and, when new, created): see `create_store_in_background`."""
    import fcntl  # POSIX only: imported where it is used

    with open(_lock_path(path), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _lock_path(path: Path) -> Path:
    # Beside the other temporary files, not the user's store: one lock per store, by its absolute path.
    return Path(tempfile.gettempdir(), f"tl-store-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock")


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    path = uri[len(prefix) :].split("?")[0] if uri.startswith(prefix) else ""
    return Path(path) if path and path != ":memory:" else None
