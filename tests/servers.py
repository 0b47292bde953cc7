"""Servers the tests start, each on a free loopback port: an MLflow tracking server and a PostgreSQL server.

PostgreSQL is Debian's `postgresql` package (apt-get install postgresql); its server refuses to run as
root, so as root it runs as the `postgres` user, with its data in a temp folder that user owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port that is free now (another process may take it before it is bound: callers retry)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(
    tmp_path: Path,
    attempts: int = 3,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    backend_store_uri: str | None = None,
) -> tuple[subprocess.Popen, str]:
    """`mlflow server` serving its own artifacts (in tmp_path), with a SQLite store in tmp_path unless
    `backend_store_uri` is given: the process and its URL. Without MLflow's job runner (the GenAI
    features' background jobs): its half a dozen consumer processes would start with each server, and
    tl needs none of them."""
    # A port found free can be taken by another process before the server binds it: then the server
    # exits, and it is started again on another port.
    log_path = tmp_path / "server.log"
    backend_store_uri = backend_store_uri or f"sqlite:///{tmp_path / 'server.db'}"
    for _ in range(attempts):
        port = free_port()
        command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                   "--backend-store-uri", backend_store_uri,
                   "--artifacts-destination", str(tmp_path / "server_artifacts"), *extra]  # fmt: skip
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / command[0]), *command[1:]], stdout=log, stderr=log,
                cwd=tmp_path, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
            )  # fmt: skip
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    return server, url
            except OSError:
                time.sleep(0.5)
        server.terminate()
        server.wait(timeout=30)
    pytest.fail(f"mlflow server did not start: {log_path.read_text()[-2000:]}")


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them out of PATH), if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of its own, for as long as the context lasts: its URL, without a database
    (postgresql://postgres@127.0.0.1:PORT). Skipped where PostgreSQL is not installed, except in CI."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed: apt-get install postgresql"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    # As root, the server runs as `postgres`, which must own its folder (one of its own under /tmp:
    # pytest's tmp_path is private to root).
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="tl-postgres-"))
    if as_postgres:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
    for _ in range(3):
        port = free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                                  "-w", "-o", options, "start"], capture_output=True, text=True)  # fmt: skip
        if started.returncode == 0:
            break
    else:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}{(folder / 'log').read_text()[-2000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server: its URL."""
    import psycopg

    # autocommit: CREATE DATABASE cannot run in a transaction
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"
