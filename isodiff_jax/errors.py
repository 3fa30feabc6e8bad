"""Errors that a user can fix (a config value, a flag, a path, a data file, a full disk): the
entry points print their message on one line and exit with the error's status (2 for bad input,
1 for a full disk), without a traceback. Every other exception is a bug and keeps its traceback."""
import contextlib
import errno
import os
import sys

TRACEBACK_ENV = "ISODIFF_TRACEBACK"  # ISODIFF_TRACEBACK=1 shows the traceback of user errors too
USAGE_EXIT = 2  # the status of a user error, as argparse's for a bad flag


class UserError(Exception):
    """A problem with the user's input; the message names the field, flag or path and what is allowed."""
    exit_status = USAGE_EXIT


class InvalidValue(UserError, ValueError):
    """A user's value that is out of range (still a ValueError for callers that catch those)."""


class MissingPath(UserError, FileNotFoundError):
    """A path the user gave that does not exist or holds nothing usable."""


class Unavailable(UserError):
    """Something the run needs is not there on this machine (a bucket, an accelerator backend):
    an environment fault, not bad usage; the same command works once it is there."""
    exit_status = 1


class DiskFull(UserError):
    """The disk filled up while the run was writing; the message names the last complete checkpoint."""
    exit_status = 1  # not a usage error: the same command works once space is freed


@contextlib.contextmanager
def exit_on_user_error(traceback: bool = False):
    """For entry points: a UserError raised inside prints `error: <message>` on stderr and exits
    with its `exit_status` (2 for bad input); with `traceback` (or ISODIFF_TRACEBACK=1) it propagates with its traceback.
    Other exceptions propagate unchanged."""
    try:
        yield
    except UserError as error:
        if traceback or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(error.exit_status) from None


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it comes from, says that the disk is full: an OSError with
    ENOSPC or EDQUOT, or TensorStore's RESOURCE_EXHAUSTED on a write (how Orbax reports it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left on device" in text or ("RESOURCE_EXHAUSTED" in text and "writing" in text.lower()):
            return True
        error = error.__cause__ or error.__context__
    return False
