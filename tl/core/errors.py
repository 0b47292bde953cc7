"""The exception types of tl's errors (TLError: a mistake a user can fix), the one behind a wrapped error, and
an error's first line."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class TLError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with how to resume in its message (a KeyboardInterrupt: the MLflow run ends KILLED)."""


class JobFailed(CompactHydraException):
    """One job of a sweep failed; Hydra prints its message alone, after the sweep's other jobs have run."""


def first_line(problem: BaseException | str) -> str:
    """The first line of an error's message (its type's name when the message is empty), or of a text: what
    a one-line report, a tag or a CSV cell shows of it."""
    text = str(problem).strip()
    if not text:
        return type(problem).__name__ if isinstance(problem, BaseException) else ""
    return text.splitlines()[0]


def find_user_error(error: BaseException) -> TLError | None:
    """The TLError behind `error`, if any (Hydra's instantiate wraps what a target raises)."""
    while error is not None:
        if isinstance(error, TLError):
            return error
        error = error.__cause__
    return None
