"""One training run per workdir: a lock file `workdir/train.lock` holding the owner's host, pid
and start time, created atomically (O_EXCL) and removed when the run ends.

A lock whose owner is on this host and no longer alive (a run killed with SIGKILL) is stale and
is taken over with a warning. A lock from another host cannot be checked from here: the second
run stops and names the owner, and the message says how to remove the lock if that run is gone.
With several processes, process 0 takes the lock and the others learn the outcome from it.
"""
import contextlib
import json
import logging
import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from isodiff_jax.errors import UserError

LOCK_FILE = "train.lock"
log = logging.getLogger(__name__)


class WorkdirLocked(UserError):
    """Another run holds the workdir's lock."""


def _owner_text(owner: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {started}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_owner(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # being written, or unreadable: treated as held


def _try_create(path: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, f)
    return True


def acquire(workdir: str) -> str:
    """Takes the lock of `workdir` (created if needed) -> the lock's path; WorkdirLocked if held."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    if _try_create(path):
        return path
    owner = _read_owner(path)
    stale = owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
        and not _alive(owner["pid"])
    if stale:
        # rename first: of two runs that both found it stale, only one renames it away
        aside = f"{path}.stale.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, aside)
            os.remove(aside)
            log.warning("removed the stale lock of a run that is gone (%s) in %s", _owner_text(owner), workdir)
        if _try_create(path):
            return path
        owner = _read_owner(path)
    raise WorkdirLocked(f"{workdir} is in use by another training run ({_owner_text(owner)}); wait for it to "
                        f"finish or use another workdir. If that run is gone, delete {path}")


def release(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def held(workdir: str):
    """The lock of `workdir` for the duration of the block, taken by process 0 for all processes."""
    path, error = None, None
    if jax.process_index() == 0:
        try:
            path = acquire(workdir)
        except WorkdirLocked as e:
            error = e
    if jax.process_count() > 1:
        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            error = WorkdirLocked(f"{workdir} is in use by another training run (process 0 could not lock it)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if path is not None:
            release(path)
