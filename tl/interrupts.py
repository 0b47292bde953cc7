"""Ctrl-C and SIGTERM stop a run, but never halfway through a database write or a checkpoint.

A KeyboardInterrupt raised inside SQLite's commit leaves the connection holding the database
lock, and the run could then not even be marked KILLED ("database is locked"). So during the
`uninterrupted` sections the signal is noted, and raised as KeyboardInterrupt when they end.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

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
