"""Checkpoints: Orbax `CheckpointManager` around the TrainState, with the config beside it as JSON.

Every process takes part in every save and restore. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed at any moment (even mid-save) leaves
only complete checkpoints plus a temporary directory that the next run deletes. Restoring
places the arrays with the shardings of the target, so a checkpoint written on N devices
restores on any other number.
"""
import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, *, keep: Optional[int] = None, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only, read_only=read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state, config_json: str) -> None:
    """Starts an (asynchronous) save of `state` at `step`; `mngr.wait_until_finished()` joins it."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(json.loads(config_json)))
    mngr.save(step, args=args, force=True)


def abstract(tree, sharding) -> Any:
    """Shape/dtype structs of `tree` (arrays or ShapeDtypeStructs) carrying `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def restore(mngr: ocp.CheckpointManager, target, step: Optional[int] = None):
    """-> (step, state) with the structure, dtypes and shardings of `target` (see `abstract`);
    the newest complete step by default; (None, None) when there is none."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None, None
    if step not in mngr.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {mngr.directory} "
                                f"(available: {sorted(mngr.all_steps())})")
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return step, restored.state


def saved_config_json(workdir: str) -> str:
    """The config a workdir was trained with (written by process 0 at the start of training)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a training workdir")
    with open(path) as f:
        return f.read()


def write_config(workdir: str, config_json: str) -> None:
    """Writes workdir/config.json atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(config_json)
    os.replace(path + ".tmp", path)
