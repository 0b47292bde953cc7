"""The one exception type for mistakes a user can fix; `run.py` prints it as one line."""


class TLError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


def find_user_error(error: BaseException) -> TLError | None:
    """The TLError behind `error`, if any (Hydra's instantiate wraps what a target raises)."""
    while error is not None:
        if isinstance(error, TLError):
            return error
        error = error.__cause__
    return None
