"""The private names of other libraries that tl still uses, each pinned: these tests fail when the library
changes what tl relies on, rather than tl failing in a user's run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hydra.core.utils import JobReturn, JobStatus

from tests.helpers import ROOT
from tl.core.errors import first_line


def test_exit_without_teardown_still_joins_threads_and_runs_exit_handlers(tmp_path):
    # tl/core/cli.py calls threading._shutdown and atexit._run_exitfuncs (CPython's own exit steps).
    script = textwrap.dedent(f"""
        import atexit, threading, time
        from pathlib import Path
        from tl.core.cli import exit_without_teardown
        out = Path({str(tmp_path)!r})
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("joined"))).start()
        exit_without_teardown(3)
        (out / "after").write_text("exit_without_teardown returned")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert (tmp_path / "thread").read_text() == "joined" and (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "after").exists()


def test_hydra_keeps_a_failed_jobs_exception_where_the_sweep_callback_reads_it():
    # tl/sweeps/parent_run.py reads JobReturn._return_value: the public return_value re-raises it (and writes
    # to stderr), so the private field must still be where Hydra keeps the exception.
    error = ValueError("lr=abc is not a number\nsecond line")
    job = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert job._return_value is error
    with pytest.raises(ValueError) as raised:
        _ = job.return_value
    assert raised.value is error


@pytest.mark.parametrize(
    ("problem", "line"),
    [
        (ValueError("first\nsecond"), "first"),
        (ValueError(""), "ValueError"),
        (KeyError(), "KeyError"),
        ("  text\nmore", "text"),
        ("", ""),
    ],
)
def test_first_line_is_the_messages_first_line_or_the_errors_type(problem, line):
    assert first_line(problem) == line
