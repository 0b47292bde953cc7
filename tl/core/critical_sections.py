"""Critical sections: work that a signal must not cut in half, and work that only one process at a time may do.

Ctrl-C and SIGTERM stop a run, but never halfway through a database write or a checkpoint. A
KeyboardInterrupt raised inside SQLite's commit leaves the connection holding the database lock, and
the run could then not even be marked KILLED ("database is locked"). So during the `uninterrupted`
sections the signal is noted, and raised as KeyboardInterrupt when they end.

Work that several processes may start together (parallel sweep jobs, torchrun ranks) and whose result
the others can then read runs `one_at_a_time`: the first does it, the others wait and find the result.
The lock is `filelock`'s (POSIX and Windows; released if the process dies); where its file cannot be
made, every process does the work itself: slower, but as correct.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

_depth = 0  # how many uninterrupted sections are open (signal handlers are process-wide)
_pending = False


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    if _depth:
        _pending = True
        return
    raise KeyboardInterrupt


class uninterrupted(contextlib.ContextDecorator):  # noqa: N801 (used like a function: `with uninterrupted():`)
    """A section that Ctrl-C or SIGTERM does not cut short: they take effect when it ends."""

    def __enter__(self) -> None:
        global _depth
        _depth += 1

    def __exit__(self, *exc_info: object) -> None:
        global _depth, _pending
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            if exc_info[0] is None:
                raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Ctrl-C and SIGTERM (a cluster's preemption) both become a KeyboardInterrupt, outside the sections."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def one_at_a_time(lock_path: Path | None) -> Iterator[None]:
    """Hold the lock at `lock_path` (made, with its folder, if missing) for the block; None: no lock."""
    lock = FileLock(lock_path) if lock_path is not None else None
    try:
        if lock is not None:
            lock.acquire()
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
