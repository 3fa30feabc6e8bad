"""Checkpoints: Orbax `CheckpointManager` around a training state, with two JSON records beside
it in every checkpoint: the model spec (`spec.ModelSpec.to_dict`, what analysis needs to rebuild
the model) and the config of the run that wrote it.

Every process takes part in every save and restore. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed at any moment (even mid-save) leaves
only complete checkpoints plus a temporary directory that the next run deletes. Restoring
places the arrays with the shardings of the target, so a checkpoint written on N devices
restores on any other number. `load_params` restores only the parameters asked for (EMA or
raw), without the optimizer state.

Orbax has no checksums, so each save also records a fingerprint of every array (its largest
|x| and the sums of |x| and x² scaled by it, computed on the device) as a fourth item. A restore checks the structure, that every
value is finite and that the fingerprints match; a checkpoint that fails (missing or garbled
files, NaN, a stray empty step directory) is skipped with a warning naming what was wrong, and
the next older one is tried.
"""
import json
import logging
import re
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from isodiff_jax import sharding, storage
from isodiff_jax.errors import DiskFull, MissingPath, UserError
from isodiff_jax.spec import ModelSpec, Params

CONFIG_FILE = "config.json"
ITEMS = ("state", "spec", "config", "integrity", "topology")
FINGERPRINT_RTOL = 1e-4  # float32 sums; another device may add in another order
log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """No intact checkpoint could be restored; the message names each step tried and its problem."""


class DamagedCheckpoint(Exception):
    """One step's checkpoint failed a check (internal: restore moves on to the previous step)."""


def checkpoint_dir(workdir: str) -> str:
    return storage.join(storage.absolute(workdir), "checkpoints")


STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's record of each step (its commit time); the step reads without it


# Orbax writes a replicated array "replica-parallel" by default: each replica writes a slice,
# cut on its device by an eagerly compiled slice per leaf shape and device. For this model's
# small leaves that costs more than it saves (a first save of the test model: 6.6 s against
# 2.1 s on 4 CPU devices), so only slices of at least this many bytes are written that way.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Orbax's handlers of the items: the state as a PyTree (the format of Orbax's
    StandardSave) with the array handler above, the records as JSON."""
    arrays = ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES)),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        *((kind, ocp.type_handlers.ScalarHandler()) for kind in (int, float, np.number)))
    state = ocp.PyTreeCheckpointHandler(type_handler_registry=arrays)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.PyTreeSave, state)
    registry.add("state", ocp.args.PyTreeRestore, state)
    for item in ITEMS[1:]:
        registry.add(item, ocp.args.JsonSave)
        registry.add(item, ocp.args.JsonRestore)
    return registry


def manager(workdir: str, *, keep: Optional[int] = None, read_only: bool = False) -> ocp.CheckpointManager:
    _check_step_records(checkpoint_dir(workdir), read_only)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only, read_only=read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, handler_registry=_handlers())


def _restore_args(target: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Reads the saved state (or, `partial`, the part of it that `target` names) with the
    structure, dtypes and shardings of `target`."""
    return ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=partial)


def _check_step_records(directory: str, read_only: bool) -> None:
    """Orbax's step records (STEP_METADATA) that are damaged: Orbax stops on one that holds
    another JSON type, and logs the bytes of one that is not JSON. Training moves them aside with
    a warning; a reader (analysis) leaves the workdir as it is and stops, naming the file."""
    if not storage.is_dir(directory):
        return
    for name in storage.list_dir(directory):
        path = storage.join(directory, name, STEP_METADATA)
        if not name.isdigit() or not storage.exists(path):
            continue
        try:
            storage.read_record(path, "move it away: the checkpoint is read without it (a training run does so)")
        except storage.DamagedFile as error:
            if read_only:
                raise
            log.warning("%s; moved it to %s", error.summary, storage.move_aside(path))


def _path_name(path) -> str:
    """A tree path as 'ema_params/down_0/conv/kernel', the same for a dataclass field and a dict key."""
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _leaf_summary(x) -> np.ndarray:
    """[all finite (1/0), m = max |x|, sum |x|/m, sum (x/m)²] of one array, scaled by m so that no
    sum overflows (parameters of a diverging run reach 1e30 while still finite). On the host with
    numpy: the state is copied there to be saved anyway, and a jitted program over the whole state
    took 40-65 s to compile on CPU (per-leaf programs, 18 s)."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    magnitude = np.max(np.abs(x, where=finite, out=np.zeros_like(x)), initial=0.0)
    y = np.where(finite, x, 0.0) / (magnitude if magnitude > 0 else 1.0)
    return np.array([finite.all(), magnitude, np.sum(np.abs(y)), np.sum(y * y)], np.float32)


def _summarise(tree: Any) -> tuple[dict, list]:
    """-> ({path name: [max |x|, sum |x|/max, sum (x/max)²]}, [names of leaves with a non-finite value])."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = [_path_name(path) for path, _ in flat]
    rows = [_leaf_summary(x) for x in jax.device_get([x for _, x in flat])]
    return ({name: [float(v) for v in row[1:]] for name, row in zip(names, rows)},
            [name for name, row in zip(names, rows) if not row[0]])


def fingerprint(tree: Any) -> dict:
    """{path name: [max |x|, sum |x| / max, sum (x / max)²]} of every array leaf (on the host,
    float32; non-finite values count as 0)."""
    return _summarise(tree)[0]


def check_intact(tree: Any, recorded: Optional[dict], prefix: str = "") -> None:
    """Raises DamagedCheckpoint if a leaf of a restored `tree` is not finite or (with `recorded`,
    the fingerprint saved with it) does not match its fingerprint; `prefix` is the path of
    `tree` inside the saved state."""
    computed, non_finite = _summarise(tree)
    if non_finite:
        raise DamagedCheckpoint(f"non-finite values in {prefix}{non_finite[0]}")
    for name, values in computed.items():
        if recorded is None:
            continue
        if prefix + name not in recorded:
            raise DamagedCheckpoint(f"{prefix}{name} has no recorded fingerprint")
        if not np.allclose(values, recorded[prefix + name], rtol=FINGERPRINT_RTOL, atol=0):
            raise DamagedCheckpoint(f"{prefix}{name} does not match its fingerprint (garbled data)")


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, spec: ModelSpec, config_json: str) -> None:
    """Starts an (asynchronous) save of `state` at `step`; `mngr.wait_until_finished()` joins it.
    Refuses a state with a non-finite leaf (nothing is written)."""
    prints, bad = _summarise(state)
    if bad:
        raise FloatingPointError(f"refusing to save step {step}: non-finite values in {', '.join(bad[:5])}")
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), spec=ocp.args.JsonSave(spec.to_dict()),
                              config=ocp.args.JsonSave(json.loads(config_json)),
                              integrity=ocp.args.JsonSave(prints), topology=ocp.args.JsonSave(topology(state)))
    mngr.save(step, args=args, force=True)


def topology(state: Any) -> dict:
    """{"devices": the devices `state` lives on, "processes": the processes of the run}: saved
    with each checkpoint, so that a resume on another slice can say what changed."""
    leaf = jax.tree.leaves(state)[0]
    devices = len(leaf.sharding.device_set) if isinstance(leaf, jax.Array) else 1
    return {"devices": devices, "processes": jax.process_count()}


def saved_topology(mngr: ocp.CheckpointManager, step: int) -> Optional[dict]:
    """The topology saved with `step`, or None for checkpoints written before it was recorded."""
    if not storage.is_dir(storage.join(str(mngr.directory), str(step), "topology")):
        return None
    try:
        return _record(mngr, step, "topology")
    except Exception as error:  # noqa: BLE001 - a damaged record only loses the message about devices
        log.warning("cannot read the topology saved with checkpoint step %d in %s (%s)", step, mngr.directory,
                    _short(error))
        return None


def disk_full(mngr: ocp.CheckpointManager, error: BaseException) -> DiskFull:
    """The one-line error for a full disk met while saving, after removing the partial step
    directories Orbax left (process 0), which would otherwise hold the space a resume needs."""
    directory = str(mngr.directory)
    try:
        mngr.wait_until_finished()  # a save still under way would write again what is removed below
    except Exception:  # noqa: BLE001 - it fails for the same reason; `error` is the one reported
        pass
    if jax.process_index() == 0:
        for name in storage.list_dir(directory):
            if ".orbax-checkpoint-tmp" in name:
                storage.remove_tree(storage.join(directory, name))
    mngr.reload()
    last = mngr.latest_step()
    kept = f"the last complete checkpoint is step {last}" if last is not None else "no checkpoint is complete"
    return DiskFull(f"the disk is full: a save in {directory} failed ({_short(error)}); {kept}. "
                    f"Free some space and run the same command to resume")


def abstract(tree: Any, target_sharding) -> Any:
    """Shape/dtype structs of `tree` (arrays or ShapeDtypeStructs) carrying `target_sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target_sharding), tree)


def _check_step(mngr: ocp.CheckpointManager, step: int) -> int:
    if step not in mngr.all_steps():
        raise MissingPath(f"no checkpoint for step {step} in {mngr.directory} "
                                f"(available: {sorted(mngr.all_steps())})")
    return step


def _short(error: BaseException) -> str:
    """The first line of an error without TensorStore's spec, at most 200 characters (Orbax's
    errors run to hundreds of lines, TensorStore's carry kilobytes of JSON)."""
    lines = str(error).strip().splitlines()
    text = (lines[0] if lines else "").split(" [tensorstore_spec")[0]
    text = re.sub(r'(Error opening "\w+" driver: )+', "", text)  # TensorStore's chain of drivers
    return f"{type(error).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}"


def _recorded_fingerprint(mngr: ocp.CheckpointManager, step: int) -> Optional[dict]:
    """The fingerprint saved with `step`, or None for checkpoints written before it existed."""
    if not storage.is_dir(storage.join(str(mngr.directory), str(step), "integrity")):
        return None
    return mngr.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore())).integrity


def first_intact(mngr: ocp.CheckpointManager, read: Callable[[int], Any], step: Optional[int] = None, *,
                 move_damaged_aside: bool = False):
    """-> (step, read(step)) for `step`, or by default the newest step whose `read` passes its
    checks, warning about each newer step that failed and why; (None, None) when there are no
    steps. `read` raises on a damaged checkpoint (anything Orbax, TensorStore or the checks
    raise). CheckpointError when no step (or the given one) is intact.

    move_damaged_aside (training): the damaged steps newer than the intact one are renamed to
    `<step>.damaged-<UTC time>` in the checkpoint directory (kept, never deleted), so that the run
    can save those steps again; nothing is moved when no step is intact."""
    if step is not None:
        steps = [_check_step(mngr, step)]
    else:
        steps = sorted(mngr.all_steps(), reverse=True)
    problems, damaged = [], []
    for s in steps:
        try:
            found = s, read(s)
        except Exception as error:  # noqa: BLE001 - the damage can surface as any error; re-raised below
            problems.append(f"step {s}: {_short(error)}")
            damaged.append((s, _short(error)))
            continue
        for bad, why in damaged:
            where = f"moved it to {_move_aside(mngr, bad)}" if move_damaged_aside else "skipped it"
            log.warning("checkpoint step %d in %s is damaged (%s); %s", bad, mngr.directory, why, where)
        if damaged and move_damaged_aside:
            mngr.reload()
        return found
    if problems:
        raise CheckpointError(f"no intact checkpoint in {mngr.directory}: " + "; ".join(problems))
    return None, None


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
    """Renames the directory of `step` to `<step>.damaged-<UTC time>` (process 0; the others wait
    for it) and returns the new path."""
    source = storage.join(str(mngr.directory), str(step))
    target = f"{source}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if jax.process_count() > 1:  # every process names the same target
        target = str(multihost_utils.broadcast_one_to_all(np.frombuffer(target.encode().ljust(512), np.uint8))
                     .tobytes().decode().rstrip())
    if jax.process_index() == 0:
        storage.move(source, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"isodiff_jax: moved checkpoint {step} aside")
    return target


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None, *,
            move_damaged_aside: bool = False) -> tuple:
    """-> (step, state) with the structure, dtypes and shardings of `target` (see `abstract`);
    the newest intact step by default (see `first_intact`, also for `move_damaged_aside`);
    (None, None) when there is none."""
    def read(s):
        state = mngr.restore(s, args=ocp.args.Composite(state=_restore_args(target))).state
        check_intact(state, _recorded_fingerprint(mngr, s))
        return state
    return first_intact(mngr, read, step, move_damaged_aside=move_damaged_aside)


class Loaded(NamedTuple):
    """One set of parameters from a checkpoint, with the spec of the model they belong to."""
    spec: ModelSpec
    params: Params
    step: int


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
    if not storage.is_dir(checkpoint_dir(workdir)):
        raise MissingPath(f"{checkpoint_dir(workdir)} does not exist: {workdir!r} is not a training workdir")
    return manager(workdir, read_only=True)


def _read_json(mngr: ocp.CheckpointManager, step: int, item: str):
    return mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


def _record(mngr: ocp.CheckpointManager, step: int, item: str) -> dict:
    """A JSON record saved with `step` that must be an object (ValueError otherwise)."""
    value = _read_json(mngr, step, item)
    if not isinstance(value, dict):
        raise ValueError(f"its {item} record holds a JSON {type(value).__name__}, not an object")
    return value


def _no_checkpoint(workdir: str):
    return MissingPath(f"{checkpoint_dir(workdir)} holds no complete checkpoint")


def read_spec(workdir: str, step: Optional[int] = None) -> tuple[ModelSpec, int]:
    """The model spec saved with the checkpoint at `step` (newest readable by default) -> (spec, step)."""
    mngr = _read_only_manager(workdir)
    found, spec = first_intact(mngr, lambda s: ModelSpec.from_dict(_read_json(mngr, s, "spec")), step)
    if found is None:
        raise _no_checkpoint(workdir)
    return spec, found


def all_steps(workdir: str) -> list:
    """The steps of a workdir's complete checkpoints (none if it has no checkpoint directory)."""
    if not storage.is_dir(checkpoint_dir(workdir)):
        return []
    return sorted(manager(workdir, read_only=True).all_steps())


def read_configs(workdir: str) -> dict:
    """{step: config JSON text} of every checkpoint whose config record can be read."""
    if not storage.is_dir(checkpoint_dir(workdir)):
        return {}
    mngr = manager(workdir, read_only=True)
    configs = {}
    for step in mngr.all_steps():
        try:
            configs[step] = json.dumps(_record(mngr, step, "config"))
        except Exception as error:  # noqa: BLE001 - a damaged record is skipped here, restore reports it
            log.warning("cannot read the config saved with checkpoint step %d of %s (%s)", step, workdir,
                        _short(error))
    return configs


def load_params(workdir: str, *, step: Optional[int] = None, ema: bool = True,
                mesh: Optional[Mesh] = None) -> Loaded:
    """The EMA (or raw) parameters of the checkpoint at `step` (by default the newest intact one,
    see `first_intact`) of a training workdir, replicated over `mesh` (all devices by default).
    Reads nothing else: no optimizer state, no data."""
    mngr = _read_only_manager(workdir)
    mesh = sharding.make_mesh() if mesh is None else mesh
    name = "ema_params" if ema else "params"

    def read(s):
        spec = ModelSpec.from_dict(_read_json(mngr, s, "spec"))
        target = {name: abstract(spec.abstract_params(), sharding.replicated(mesh))}
        params = mngr.restore(s, args=ocp.args.Composite(state=_restore_args(target, partial=True))).state[name]
        check_intact(params, _recorded_fingerprint(mngr, s), prefix=name + "/")
        return spec, params

    found, loaded = first_intact(mngr, read, step)
    if found is None:
        raise _no_checkpoint(workdir)
    return Loaded(spec=loaded[0], params=loaded[1], step=found)


def saved_config_json(workdir: str) -> str:
    """The config a workdir was trained with (written by process 0 at the start of training)."""
    path = storage.join(workdir, CONFIG_FILE)
    if not storage.exists(path):
        raise MissingPath(f"{path} does not exist: {workdir!r} is not a training workdir")
    return json.dumps(storage.read_record(
        path, "every training run writes it again at its start; delete it, and a resume of checkpoints that "
              "carry no config of their own is then not checked against it"))


def write_config(workdir: str, config_json: str) -> None:
    """Writes workdir/config.json atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    storage.write_text(storage.join(workdir, CONFIG_FILE), config_json)
