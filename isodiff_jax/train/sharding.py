"""Data parallelism over a one-axis device mesh ("data",): the batch is sharded along its first
axis, everything else replicated. The same code runs on 1 device, N devices and N processes."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A ("data",) mesh over all devices of all processes (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def global_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows (B / processes, ...) -> the global (B, ...) array sharded over the mesh."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local_rows)


def replicate(tree, mesh: Mesh):
    """Places a pytree of host or device arrays, identical on every process, replicated on the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
