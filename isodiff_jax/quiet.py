"""Quiet output for the entry points: third-party messages that tell a user nothing are dropped.

What is dropped, and why it says nothing to a user:
- Orbax's log records below CRITICAL ("Given directory is read only", "Sharding info not
  provided", and the tracebacks of its background threads when a save or a read fails): every
  failure Orbax has reaches this package as an exception, which is reported in one line (a
  damaged checkpoint, a full disk) or keeps its traceback (a bug).
- gcsfs's tracebacks of each retried request: a request that fails for good reaches this
  package as an exception (a bucket that cannot be reached is one line).
- asyncio's "Task exception was never retrieved" and the "Event loop is closed" errors that
  TensorStore's callbacks raise after Orbax has given up on a damaged checkpoint (hundreds of
  tracebacks for one missing file).

`ISODIFF_VERBOSE=1` keeps all of it. Entry points call `quiet_third_party()` once; library code
never does (nothing changes at import).
"""
import logging
import os
import sys

VERBOSE_ENV = "ISODIFF_VERBOSE"
_ORBAX_PATH = os.sep + "orbax" + os.sep


def verbose() -> bool:
    """ISODIFF_VERBOSE is set to something other than "" or "0"."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _DropOrbax(logging.Filter):
    """Drops records logged from Orbax's source files below CRITICAL (Orbax logs through absl's
    one logger, so a level per library is not possible)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_ORBAX_PATH in record.pathname and record.levelno < logging.CRITICAL)


def _closed_loop(unraisable) -> bool:
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def quiet_third_party() -> bool:
    """Installs the filters above for this process (again: no change). Returns False, and
    changes nothing, with ISODIFF_VERBOSE=1."""
    if verbose():
        return False
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbax) for f in absl.filters):
        absl.addFilter(_DropOrbax())
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "isodiff_quiet", False):
        previous = sys.unraisablehook

        def hook(unraisable):
            if not _closed_loop(unraisable):
                previous(unraisable)

        hook.isodiff_quiet = True
        sys.unraisablehook = hook
    return True
