"""Batches as pure functions of (seed, step), and a background prefetcher.

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
import queue
import threading
import time
from typing import Any, Callable, Self

import numpy as np

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


class _Failure:
    """Carries an exception from the worker thread to the consumer."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class Prefetcher:
    """Iterator over `load(step)` for step = start_step, start_step + 1, …, loaded ahead.

    A daemon thread fills a queue of `buffer_size` batches while the consumer computes. An
    exception in `load` is raised by the `next()` that would have returned that batch. Close it
    (or use it as a context manager) to stop the thread. `wait_seconds` totals the time `next()`
    waited for a batch and `load_seconds` the time spent loading, so a benchmark can report the
    share of step time that input costs.
    """

    def __init__(self, load: Callable[[int], Any], start_step: int, *, buffer_size: int = 2) -> None:
        self.check_arguments(start_step, buffer_size)
        self.step = start_step  # the step of the batch that the next `next()` returns
        self.wait_seconds = 0.0
        self.load_seconds = 0.0
        self._load = load
        self._queue = queue.Queue(maxsize=buffer_size)
        self._stop = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._work, args=(start_step,), daemon=True,
                                        name="Prefetcher")
        self._thread.start()

    @staticmethod
    def check_arguments(start_step: int, buffer_size: int) -> None:
        """ValueError for a negative start step or a buffer of fewer than one batch."""
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        check_non_negative(start_step=start_step)

    def _put(self, item: Any) -> bool:
        """Queues `item` unless closed first; the timeout lets `close()` end a blocked put."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, step: int) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                item = self._load(step)
            except Exception as error:  # every failure must reach the consumer
                self._put(_Failure(error))
                return
            self.load_seconds += time.perf_counter() - start
            if not self._put(item):
                return
            step += 1

    def _get(self) -> Any:
        """The next queued item; polls so that a `close()` from another thread cannot hang it."""
        while True:
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    raise RuntimeError("Prefetcher is closed") from None
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("Prefetcher's worker thread died") from None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Any:
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise RuntimeError("Prefetcher is closed")
        start = time.perf_counter()
        item = self._get()
        self.wait_seconds += time.perf_counter() - start
        if isinstance(item, _Failure):
            self._error = item.error
            self.close()
            raise item.error
        self.step += 1
        return item

    def close(self) -> None:
        """Stops the worker thread and drops queued batches; safe to call more than once."""
        self._stop.set()
        while True:  # unblock a worker waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
