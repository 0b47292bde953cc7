"""The one exception type for mistakes a user can fix, and how the CLIs print it as one line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

T = TypeVar("T")


class TLError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


def find_user_error(error: BaseException) -> TLError | None:
    """The TLError behind `error`, if any (Hydra's instantiate wraps what a target raises)."""
    while error is not None:
        if isinstance(error, TLError):
            return error
        error = error.__cause__
    return None


def one_line_errors(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """For a Hydra task function: a user mistake exits with status 1 and one logged line, no traceback."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            logging.getLogger("tl").error("error: %s", user_error)
            sys.exit(1)

    return wrapper
