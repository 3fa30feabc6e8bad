"""Data parallelism over a one-axis device mesh ("data",): the batch is sharded along its first
axis, everything else replicated. The same code runs on 1 device, N devices and N processes.

Training and the evaluators share these helpers. An evaluator given a mesh splits its batches
over the devices (of every process) where they divide evenly, and brings results back with
`to_host`, which gathers across processes when a result is not all on this one.
"""
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
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


def rows_sharding(batch: int, mesh: Mesh) -> NamedSharding:
    """Sharded over the batch axis when `batch` divides over the mesh, else replicated."""
    return batch_sharded(mesh) if batch % mesh.size == 0 else replicated(mesh)


def put_rows(x, mesh: Optional[Mesh]) -> jax.Array:
    """A host array (B, ...), identical on every process, placed on the mesh by `rows_sharding`
    (every process keeps only its own shards); without a mesh, on the default device."""
    x = np.asarray(x)
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.make_array_from_callback(x.shape, rows_sharding(x.shape[0], mesh), lambda index: x[index])


def constrain_rows(x: jax.Array, mesh: Optional[Mesh]) -> jax.Array:
    """Inside jit: ask for x (B, ...) to be split over the mesh's devices by rows (when B divides)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, rows_sharding(x.shape[0], mesh))


def to_host(x) -> np.ndarray:
    """A result as a NumPy array on every process (gathered from the others where needed)."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
