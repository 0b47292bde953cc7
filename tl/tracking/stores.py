"""Which MLflow store a run logs to: checked before any training, created if new, never with a password.

Light at import: MLflow and urllib are imported when a run starts, so that loading the sweep callback
(which Hydra does for every run, before run.py checks the config) costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock

from tl.core.errors import TLError

log = logging.getLogger(__name__)

LOCAL_STORE = "sqlite:///mlflow.db"  # tracking.fallback=local; also MLflow's default store
# Run in a child process: the store this process will open (MLflow resolves `uri or its default` alike
# in both, from the same environment and folder), created if it is new, under the store's lock.
CREATE_STORE = """import sys, filelock, mlflow
with filelock.FileLock(sys.argv[2]):
    mlflow.MlflowClient(sys.argv[1] or mlflow.get_tracking_uri()).search_experiments()
"""


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
        with _store_lock(path) if path else contextlib.nullcontext():
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
    """Start creating a new local MLflow store (a SQLite file) in a child process, while this one loads torch
    and the rest on one core: MLflow creates a database by running each of its schema migrations
    (benchmarks/overhead.py: run start), once per store, so a user's first run paid it. The child creates it
    holding the store's lock, which `use_store` takes too: a run that opens the store meanwhile waits for the
    child and then finds its tables (MLflow's tracking store takes no lock of its own, and two processes
    migrating one new database at once fail). Nothing starts when the store exists or is not a SQLite file.
    The child runs in its own session: a Ctrl-C meant for the run does not stop it halfway through a migration."""
    path = _sqlite_path(uri or os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE)
    if path is None or path.exists() or (not uri and Path("mlruns").is_dir()):
        return None  # (./mlruns makes MLflow's default a file store)
    return subprocess.Popen(
        [sys.executable, "-c", CREATE_STORE, uri or "", str(_lock_path(path))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _store_lock(path: Path) -> FileLock:
    """Held while a SQLite store is opened (and, when new, created): see `create_store_in_background`."""
    return FileLock(_lock_path(path))


def _lock_path(path: Path) -> Path:
    # Beside the other temporary files, not the user's store: one lock per store, by its absolute path.
    return Path(tempfile.gettempdir(), f"tl-store-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock")


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    path = uri[len(prefix) :].split("?")[0] if uri.startswith(prefix) else ""
    return Path(path) if path and path != ":memory:" else None
