"""One training run per workdir: a lock file `workdir/train.lock` holding the owner's host, pid
and start time, created atomically (O_EXCL locally; in a bucket, GCS's ifGenerationMatch=0
precondition, see `storage.create_exclusive`) and removed when the run ends.

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

from isodiff_jax import storage
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
    """The owner recorded in the lock at `path`; {} when it is gone (released meanwhile); a
    damaged lock -> storage.DamagedFile naming it (its owner cannot be told, so it stays held)."""
    try:
        return storage.read_record(path, f"if no training run uses this workdir, delete {path}")
    except FileNotFoundError:
        return {}


def _try_create(path: str) -> bool:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    return storage.create_exclusive(path, json.dumps(owner))


def _make_workdir(workdir: str) -> None:
    """Creates a local workdir, or says in one line why it cannot be one."""
    if storage.is_url(workdir):
        return
    if storage.exists(workdir) and not storage.is_dir(workdir):
        raise UserError(f"the workdir {workdir} is a file, not a folder: choose another --workdir")
    try:
        storage.make_dirs(workdir)
    except OSError as error:
        raise UserError(f"cannot create the workdir {workdir}: {error.strerror or error} "
                        f"(its parent must be a writable folder)") from None


def acquire(workdir: str) -> str:
    """Takes the lock of `workdir` (created if needed) -> the lock's path; WorkdirLocked if held."""
    _make_workdir(workdir)
    path = storage.join(workdir, LOCK_FILE)
    try:
        if _try_create(path):
            return path
    except OSError as error:  # a read-only mount, no permission (FileExistsError is caught inside)
        raise UserError(f"cannot write in the workdir {workdir}: {error.strerror or error}") from None
    try:
        owner = _read_owner(path)
    except storage.DamagedFile as error:
        raise WorkdirLocked(f"{workdir} is locked, and {error}") from None
    stale = owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
        and not _alive(owner["pid"])
    if stale:
        # rename first: of two runs that both found it stale, only one renames it away
        aside = f"{path}.stale.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            storage.move(path, aside)
            storage.remove(aside)
            log.warning("removed the stale lock of a run that is gone (%s) in %s", _owner_text(owner), workdir)
        if _try_create(path):
            return path
        owner = _read_owner(path)
    raise WorkdirLocked(f"{workdir} is in use by another training run ({_owner_text(owner)}); wait for it to "
                        f"finish or use another workdir. If that run is gone, delete {path}")


def release(path: str) -> None:
    storage.remove(path)


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
