"""Checkpoints: Orbax `CheckpointManager` around a training state, with two JSON records beside
it in every checkpoint: the model spec (`spec.ModelSpec.to_dict`, what analysis needs to rebuild
the model) and the config of the run that wrote it.

Every process takes part in every save and restore. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed at any moment (even mid-save) leaves
only complete checkpoints plus a temporary directory that the next run deletes. Restoring
places the arrays with the shardings of the target, so a checkpoint written on N devices
restores on any other number. `load_params` restores only the parameters asked for (EMA or
raw), without the optimizer state.
"""
import json
import os
from typing import Any, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from isodiff_jax import sharding
from isodiff_jax.spec import ModelSpec, Params

CONFIG_FILE = "config.json"
ITEMS = ("state", "spec", "config")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, *, keep: Optional[int] = None, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only, read_only=read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, spec: ModelSpec, config_json: str) -> None:
    """Starts an (asynchronous) save of `state` at `step`; `mngr.wait_until_finished()` joins it."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), spec=ocp.args.JsonSave(spec.to_dict()),
                              config=ocp.args.JsonSave(json.loads(config_json)))
    mngr.save(step, args=args, force=True)


def abstract(tree: Any, target_sharding) -> Any:
    """Shape/dtype structs of `tree` (arrays or ShapeDtypeStructs) carrying `target_sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target_sharding), tree)


def _check_step(mngr: ocp.CheckpointManager, step: Optional[int]) -> Optional[int]:
    step = mngr.latest_step() if step is None else step
    if step is not None and step not in mngr.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {mngr.directory} "
                                f"(available: {sorted(mngr.all_steps())})")
    return step


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None) -> tuple:
    """-> (step, state) with the structure, dtypes and shardings of `target` (see `abstract`);
    the newest complete step by default; (None, None) when there is none."""
    step = _check_step(mngr, step)
    if step is None:
        return None, None
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return step, restored.state


class Loaded(NamedTuple):
    """One set of parameters from a checkpoint, with the spec of the model they belong to."""
    spec: ModelSpec
    params: Params
    step: int


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"{checkpoint_dir(workdir)} does not exist: {workdir!r} is not a training workdir")
    return manager(workdir, read_only=True)


def read_spec(workdir: str, step: Optional[int] = None) -> tuple[ModelSpec, int]:
    """The model spec saved with the checkpoint at `step` (newest by default) -> (spec, step)."""
    mngr = _read_only_manager(workdir)
    step = _check_step(mngr, step)
    if step is None:
        raise FileNotFoundError(f"{checkpoint_dir(workdir)} holds no complete checkpoint")
    return ModelSpec.from_dict(mngr.restore(step, args=ocp.args.Composite(spec=ocp.args.JsonRestore())).spec), step


def load_params(workdir: str, *, step: Optional[int] = None, ema: bool = True,
                mesh: Optional[Mesh] = None) -> Loaded:
    """The EMA (or raw) parameters of the checkpoint at `step` (newest by default) of a training
    workdir, replicated over `mesh` (all devices by default). Reads nothing else: no optimizer
    state, no data."""
    spec, step = read_spec(workdir, step)
    mesh = sharding.make_mesh() if mesh is None else mesh
    name = "ema_params" if ema else "params"
    target = {name: abstract(spec.abstract_params(), sharding.replicated(mesh))}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    restored = _read_only_manager(workdir).restore(step, args=ocp.args.Composite(state=args))
    return Loaded(spec=spec, params=restored.state[name], step=step)


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
