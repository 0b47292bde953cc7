"""One process at a time for work that several processes may start together (parallel sweep jobs,
torchrun ranks, sweepers on one machine) and whose result the others can then read: the first does
it, the others wait and find the result.

The lock is advisory (POSIX `flock`, released when the file is closed, also if the process dies).
Where there is none (Windows) or the lock file cannot be written, every process does the work
itself: slower, but as correct.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextlib.contextmanager
def one_at_a_time(lock_path: Path | None) -> Iterator[None]:
    """Hold the lock at `lock_path` (made, with its folder, if missing) for the block; None: no lock."""
    lock = None
    if lock_path is not None and fcntl is not None:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_path, "a")  # noqa: SIM115 (held across the yield)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.close()
