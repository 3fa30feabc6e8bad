"""Batches as pure functions of (seed, step), loaded ahead by `prefetch_batches`.

For a source of N examples and global batch B, row k of step s is global position g = s B + k,
in epoch e = g // N, and shows example permutation_e[g mod N], where permutation_e is a NumPy
permutation seeded by (seed, e). So every example appears once per epoch, and a resumed run
needs only its step to continue exactly where it stopped: no iterator state is saved. Random
horizontal flips are decided by (seed, s, k) alone.

With P processes, process p loads rows [p B/P, (p+1) B/P) of the global batch, the slice that
`jax.make_array_from_process_local_data` expects from it. Batches are float32 (B/P, R, R, 3) in
[-1, 1], NHWC.
"""
import functools

import numpy as np

from isodiff_jax.data.prefetch import Prefetcher
from isodiff_jax.data.source import Source

# A leading stream number keeps the two kinds of NumPy seed apart: without it the permutation
# of epoch e and the flips of step s = e would draw from the same seed (seed, e).
_PERMUTATION_STREAM, _FLIP_STREAM = 1, 2


def check_non_negative(**values: int) -> None:
    """ValueError naming the first of `values` that is negative."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


# Holds the current and the next epoch (a batch can straddle both) of up to two sources.
@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of examples in `epoch`: a read-only permutation of 0 … N-1, (N,)."""
    rng = np.random.default_rng([_PERMUTATION_STREAM, seed, epoch])
    permutation = rng.permutation(num_examples)
    permutation.flags.writeable = False  # cached and shared between calls
    return permutation


def batch_indices(seed: int, step: int, global_batch: int, num_examples: int) -> np.ndarray:
    """Example indices of the global batch of `step`: (B,) int64."""
    check_non_negative(seed=seed, step=step)
    if global_batch < 1 or num_examples < 1:
        raise ValueError(f"global_batch and num_examples must be >= 1, got {global_batch}, "
                         f"{num_examples}")
    positions = step * global_batch + np.arange(global_batch, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty(global_batch, np.int64)
    for epoch in np.unique(epochs):
        rows = epochs == epoch
        indices[rows] = epoch_permutation(seed, int(epoch), num_examples)[offsets[rows]]
    return indices


def flip_mask(seed: int, step: int, global_batch: int) -> np.ndarray:
    """Which rows of the global batch of `step` to flip horizontally: bool (B,)."""
    check_non_negative(seed=seed, step=step)
    return np.random.default_rng([_FLIP_STREAM, seed, step]).random(global_batch) < 0.5


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """The slice of global-batch rows that process `process_index` of `process_count` loads."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} does not divide across "
                         f"{process_count} processes")
    per_process = global_batch // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


def load_images(source: Source, step: int, *, seed: int, global_batch: int, process_index: int = 0,
                process_count: int = 1, random_flip: bool = False) -> np.ndarray:
    """This process's part of the batch of `step` as the source gives it: uint8 (B/P, R, R, 3)."""
    rows = process_rows(global_batch, process_index, process_count)
    indices = batch_indices(seed, step, global_batch, len(source))[rows]
    images = source.get(indices)
    if random_flip:
        flip = flip_mask(seed, step, global_batch)[rows]
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    return images


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def load_batch(source: Source, step: int, **kwargs) -> np.ndarray:
    """This process's part of the batch of `step`: float32 (B/P, R, R, 3) in [-1, 1]; `kwargs`
    as `load_images` takes them."""
    return to_unit_range(load_images(source, step, **kwargs))


def prefetch_batches(source: Source, start_step: int, *, seed: int, global_batch: int,
                     process_index: int = 0, process_count: int = 1, random_flip: bool = False,
                     buffer_size: int = 2, workers: int = 0):
    """`load_batch(source, step, ...)` from `start_step` on, loaded ahead: by one thread
    (`Prefetcher`, workers=0) or by `workers` processes (`workers.WorkerPrefetcher`, the same
    batches and interface).

    Arguments are checked here, so a misconfiguration fails at construction, not at `next()`.
    """
    from isodiff_jax.data import workers as worker_processes
    workers = worker_processes.check_workers(workers)
    process_rows(global_batch, process_index, process_count)
    batch_indices(seed, start_step, global_batch, len(source))
    load = functools.partial(load_images, source, seed=seed, global_batch=global_batch,
                             process_index=process_index, process_count=process_count,
                             random_flip=random_flip)
    if workers:  # uint8 between processes (4x fewer bytes than float32), converted by the prefetch thread
        return worker_processes.WorkerPrefetcher(load, start_step, workers=workers, buffer_size=buffer_size,
                                                 finish=to_unit_range)
    return Prefetcher(lambda step: to_unit_range(load(step)), start_step, buffer_size=buffer_size)
