"""Every path the project reads or writes, on the local disk or in a bucket, through one module.

A path is a string: a local path, or a URL such as `gs://bucket/run` (any protocol that fsspec
serves; `gs://` through gcsfs is the one tested, against fake-gcs-server). Local paths keep their
POSIX behaviour exactly (`os`, `open`, `os.replace`); URLs go through fsspec, the layer under
etils.epath, which Orbax uses for the same paths (fsspec directly, because it offers the
exclusive create the lock needs). No other module calls `open`, `os.path` or `os.replace` on a
user's path.

What a bucket lacks, and what stands in for it:
- atomic replace: a local file is written beside its target and renamed over it; an object is
  written in one request, and GCS shows a new object only once it is complete, so a reader
  sees the old object or the new one, never a part.
- exclusive create (the workdir lock): GCS's `ifGenerationMatch=0` precondition (gcsfs's
  `pipe(mode="create")`), so of two runs exactly one creates the object.
- rename of a folder (a damaged checkpoint moved aside): copy every object, then delete the
  source. Not atomic: a run killed in between leaves both copies, and the next run moves the
  source aside again; nothing is lost.
- append (`metrics.jsonl`): the object is read and written whole (a few kB per 1,000 steps).
- folders: objects need none; `make_dirs` creates nothing in a bucket, and never a bucket.

Listings are never trusted from a cache: Orbax writes the same bucket through TensorStore,
another client (see `_fs`).
"""
import errno
import io
import json
import logging
import os
import shutil
import threading
import time

import fsspec

from isodiff_jax.errors import MissingPath, Unavailable, UserError


log = logging.getLogger(__name__)


class StorageUnavailable(Unavailable):
    """A bucket that does not exist or cannot be reached."""


def is_url(path) -> bool:
    """Whether `path` names a bucket (or any fsspec protocol) rather than a local file."""
    return "://" in str(path)


def _fs(path: str):
    """-> (fsspec filesystem, the path in its terms) for a URL, with the cached listings of every
    instance of its kind dropped (see `_forget_listings`)."""
    fs, p = fsspec.core.url_to_fs(path)
    _forget_listings(fs)
    return fs, p


def _forget_listings(fs) -> None:
    """Drops the cached listings of `fs` and of every other instance of its class: etils.epath
    (Orbax) keeps its own instance (other options), so a folder moved here would otherwise
    stay in the listing Orbax reads next; and TensorStore writes the bucket behind both."""
    for instance in [fs, *getattr(type(fs), "_cache", {}).values()]:
        instance.invalidate_cache()


def absolute(path) -> str:
    """A local path made absolute, a URL without its trailing slash."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def join(path, *parts: str) -> str:
    path = os.fspath(path)
    if is_url(path):
        return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(path, *parts)


def name(path) -> str:
    """The last component: `gs://b/runs/a/` -> `a`."""
    return os.path.basename(os.fspath(path).rstrip("/")) if is_url(path) else os.path.basename(os.path.normpath(path))


def parent(path) -> str:
    path = absolute(path)
    return path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def _ask(path, local, method: str):
    """`local(path)` for a local path, the fsspec filesystem's `method` for a URL."""
    if not is_url(path):
        return local(path)
    fs, p = _fs(path)
    return getattr(fs, method)(p)


def exists(path) -> bool:
    return _ask(path, os.path.exists, "exists")


def is_dir(path) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def is_file(path) -> bool:
    return _ask(path, os.path.isfile, "isfile")


def size(path) -> int:
    """A file's size in bytes."""
    return _ask(path, os.path.getsize, "size")


def make_dirs(path) -> None:
    """Creates a local folder and its parents; nothing for a URL (objects need no folders)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def list_dir(path) -> list[str]:
    """The names directly inside a folder ([] when it does not exist)."""
    if not is_url(path):
        return os.listdir(path) if os.path.isdir(path) else []
    fs, p = _fs(path)
    if not fs.isdir(p):
        return []
    return sorted({name(entry) for entry in fs.ls(p, detail=False)} - {""})


def walk_files(root) -> list[str]:
    """Every file below `root`, recursively, as full paths (local paths or URLs), sorted. Local
    symbolic links to folders are followed, each folder once: a link back up the tree (`ln -s .
    sub/loop`) would otherwise list every file below it again and again."""
    if not is_url(root):
        found, seen = [], set()
        for directory, subdirectories, files in os.walk(root, followlinks=True):
            real = os.path.realpath(directory)
            if real in seen:
                subdirectories[:] = []  # a folder already listed, reached again through a link
                continue
            seen.add(real)
            subdirectories.sort()  # a fixed visiting order: which path of a linked folder is kept
            found += [os.path.join(directory, f) for f in files]
        return sorted(found)
    fs, p = _fs(root)
    protocol = os.fspath(root).split("://", 1)[0]
    return sorted(f"{protocol}://{found}" for found in fs.find(p))


def copy_tree(source, target) -> None:
    """Copies every file below `source` to the same place below `target` (either may be a URL)."""
    source = os.fspath(source)
    for path in walk_files(source):
        write_bytes(join(target, os.path.relpath(path, source) if not is_url(source) else path[len(source) + 1:]),
                    read_bytes(path))


def read_bytes(path) -> bytes:
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    fs, p = _fs(path)
    return fs.cat_file(p)


def read_text(path) -> str:
    return read_bytes(path).decode()


def read_json(path):
    return json.loads(read_text(path))


class DamagedFile(UserError):
    """A file the project wrote, and reads back, that is cut short or overwritten. `summary`
    names the file and what is wrong; the message adds what to do."""
    exit_status = 1  # not bad usage: the same command works once the file is repaired or moved

    def __init__(self, path, problem: str, remedy: str = ""):
        self.summary = f"{path} is damaged ({problem})"
        super().__init__(f"{self.summary}: {remedy}" if remedy else self.summary)


def read_record(path, remedy: str, kind: type = dict):
    """The JSON value of `kind` (an object by default) that the project wrote to `path`; a damaged
    file (cut short, random bytes, another JSON type) -> DamagedFile, one line naming the file,
    what is wrong and `remedy` (what to do). A missing file stays FileNotFoundError."""
    data = read_bytes(path)
    try:
        value = json.loads(data.decode())
    except UnicodeDecodeError:
        problem = "not text"
    except ValueError as error:
        problem = "not JSON, or cut short" if not data.strip() else f"not JSON, or cut short: {error}"
    else:
        if isinstance(value, kind):
            return value
        problem = f"a JSON {_JSON_TYPES.get(type(value), 'value')} where a JSON {_JSON_TYPES[kind]} belongs"
    raise DamagedFile(path, problem, remedy)


def read_saved(path, kind: type = dict):
    """A result this project computed and saved at `path` (a measurement, a summary) -> its JSON
    value; None when there is none, or when it is damaged: then it is moved aside (never
    deleted) with a one-line warning, and the caller computes it again."""
    if not exists(path):
        return None
    try:
        return read_record(path, "", kind)
    except DamagedFile as error:
        aside = move_aside(path)
        log.warning("%s; moved it to %s, and it is computed again", error.summary, aside)
        return None


def write_results(path, results: dict, key: str = "runs") -> str:
    """Writes the JSON `results` to `path`, unless the results saved there list entries under `key`
    (names, or objects with a "name") that these lack: a run that found fewer than an earlier one
    never replaces it; it writes `<stem>.partial.json` beside it and warns -> the path written."""
    entry_name = lambda entry: entry.get("name") if isinstance(entry, dict) else entry
    saved = read_saved(path)
    lost = sorted({entry_name(e) for e in (saved or {}).get(key, [])} - {entry_name(e) for e in results.get(key, [])})
    if lost:
        path = path[:-len(".json")] + ".partial.json" if path.endswith(".json") else path + ".partial"
        log.warning("%d %s of the results there are not in these (%s): written to %s instead", len(lost), key,
                    ", ".join(map(str, lost[:3])) + ("..." if len(lost) > 3 else ""), path)
    write_json(path, results, indent=2)
    return path


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def move_aside(path) -> str:
    """Renames a damaged file to `<path>.damaged-<UTC time>` (kept for a person to look at, never
    deleted) -> the new path."""
    target = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    move(path, target)
    return target


def open_read(path):
    """A binary file object to read `path` (a local file, or the object's bytes in memory)."""
    return open(path, "rb") if not is_url(path) else io.BytesIO(read_bytes(path))


def write_bytes(path, data: bytes) -> None:
    """Writes `data` to `path` atomically: a reader sees the old content or the new, never a
    part. Creates a local file's folder."""
    if is_url(path):
        fs, p = _fs(path)
        fs.pipe_file(p, data)
        _forget_listings(fs)
        return
    make_dirs(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: hosts of a pod may write the same local cache
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)  # a full disk leaves no half-written file behind
        raise


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path, value, **dump_options) -> None:
    write_text(path, json.dumps(value, **dump_options))


def append_text(path, text: str) -> None:
    """Appends to a file (a local append; an object is read and rewritten whole)."""
    if not is_url(path):
        make_dirs(os.path.dirname(os.path.abspath(path)))
        with open(path, "a") as f:
            f.write(text)
        return
    old = read_bytes(path) if exists(path) else b""
    write_bytes(path, old + text.encode())


def create_exclusive(path, text: str) -> bool:
    """Creates `path` holding `text` unless it exists -> whether this call created it. Atomic
    against other processes and hosts (O_EXCL; GCS's ifGenerationMatch=0)."""
    if is_url(path):
        fs, p = _fs(path)
        try:
            fs.pipe_file(p, text.encode(), mode="create")
        except FileExistsError:
            return False
        finally:
            _forget_listings(fs)
        return True
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.link(tmp, path)  # fails if `path` exists; a reader never sees it empty or half-written
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        return _create_exclusive_unlinked(path, text)  # a file system without hard links
    finally:
        _remove_quietly(tmp)
    return True


def _create_exclusive_unlinked(path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def remove(path) -> None:
    """Removes a file; nothing when it is gone already."""
    if not is_url(path):
        _remove_quietly(path)
        return
    fs, p = _fs(path)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        pass
    _forget_listings(fs)


def remove_tree(path) -> None:
    """Removes a folder and everything in it; nothing when it is gone already."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)
    _forget_listings(fs)


def move(source, target) -> None:
    """Renames a file or folder (a bucket: copies everything, then deletes the source)."""
    if not is_url(source):
        os.rename(source, target)
        return
    fs, src = _fs(source)
    _, dst = _fs(target)
    if fs.isdir(src):
        for found in fs.find(src):
            fs.copy(found, dst + found[len(src):])
        fs.rm(src, recursive=True)
    else:
        fs.mv(src, dst)
    _forget_listings(fs)


def check_reachable(path, timeout: float = 20.0) -> None:
    """For a URL: StorageUnavailable naming the bucket when it does not exist or does not answer
    within `timeout` seconds (wrong host, no credentials, no network: gcsfs would retry for
    over a minute). Nothing for a local path."""
    if not is_url(path):
        return
    protocol, rest = os.fspath(path).split("://", 1)
    bucket = rest.split("/", 1)[0]

    answer: dict = {}

    def ask() -> None:
        try:
            fs, _ = _fs(path)
            answer["found"] = fs.exists(bucket)
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            answer["error"] = error

    # a daemon thread: one that still retries must not keep the process from exiting
    asking = threading.Thread(target=ask, name="storage-check", daemon=True)
    asking.start()
    asking.join(timeout)
    error = answer.get("error")
    if asking.is_alive():
        raise StorageUnavailable(f"the bucket {protocol}://{bucket} cannot be reached: no answer within "
                                 f"{timeout:.0f} s (network, endpoint or credentials)")
    if isinstance(error, ImportError):
        raise StorageUnavailable(f"{path}: no client for {protocol}:// is installed ({error})")
    if error is not None:  # connection, credential and HTTP errors all mean unreachable
        raise StorageUnavailable(f"the bucket {protocol}://{bucket} cannot be reached: "
                                 f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
    found = answer["found"]
    if not found:
        raise StorageUnavailable(f"the bucket {protocol}://{bucket} does not exist (or this account cannot see it); "
                                 f"create it first")


def require(path, what: str) -> str:
    """`path` made absolute, or MissingPath saying that `what` is not there."""
    if not exists(path):
        raise MissingPath(f"{absolute(path)} does not exist: {what}")
    return absolute(path)


def _remove_quietly(path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
