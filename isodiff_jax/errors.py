"""Errors that a user can fix (a config value, a flag, a path, a data file): the entry points
print their message on one line and exit with status 2, without a traceback. Every other
exception is a bug and keeps its traceback."""
import contextlib
import os
import sys

TRACEBACK_ENV = "ISODIFF_TRACEBACK"  # ISODIFF_TRACEBACK=1 shows the traceback of user errors too
USAGE_EXIT = 2  # the status of a user error, as argparse's for a bad flag


class UserError(Exception):
    """A problem with the user's input; the message names the field, flag or path and what is allowed."""


class InvalidValue(UserError, ValueError):
    """A user's value that is out of range (still a ValueError for callers that catch those)."""


class MissingPath(UserError, FileNotFoundError):
    """A path the user gave that does not exist or holds nothing usable."""


@contextlib.contextmanager
def exit_on_user_error(traceback: bool = False):
    """For entry points: a UserError raised inside prints `error: <message>` on stderr and exits
    with status 2; with `traceback` (or ISODIFF_TRACEBACK=1) it propagates with its traceback.
    Other exceptions propagate unchanged."""
    try:
        yield
    except UserError as error:
        if traceback or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT) from None
