"""Batches loaded ahead by worker processes (grain), for sources whose decoding can bound the step
rate: JPEG/PNG folders and TFDS records at 256². One thread decodes on one core; W workers use
W (docs/benchmarks.md, "Input at accelerator speed": 1.7-1.8x the thread with 2 workers on 2 cores).

The batch of step s is `load(s)`, a pure function of (seed, s) as in `pipeline`. Grain maps
steps to batches (`MapDataset.range(start, ∞).map(load)`) and `mp_prefetch` runs W processes:
worker i loads steps start + i, start + i + W, …, and the main process returns them in step order.
So the batches are exactly those of the thread prefetcher, bit for bit; a resumed run restarts at
its step (the iterator's whole state is the step, which every checkpoint holds); and each process
of a multi-process run loads only its own rows (`load` takes its process_index).

The source is pickled to each worker once, at start. The first batch takes 1-3 s (fresh Python
processes import the package), so use workers for long runs on slow sources,
and the thread (`workers=0`) for the built-in shapes and for tests.
"""
import functools
import time
from typing import Any, Callable

import numpy as np

from isodiff_jax.data.prefetch import Prefetcher

_END = 2**62  # the last step + 1 of the unbounded step range (grain needs a stop)


def _timed(load: Callable[[int], Any], step: int) -> tuple[Any, float]:
    start = time.perf_counter()
    batch = load(step)
    return batch, time.perf_counter() - start


def _absl_flags_ready() -> None:
    """Grain reads its options from absl flags, and refuses before they are parsed. A training
    script that uses absl has parsed them; elsewhere (a notebook, a test) mark them parsed,
    leaving every flag at its default, rather than reading sys.argv."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class WorkerPrefetcher(Prefetcher):
    """Iterator over `finish(load(step))` for step = start_step, start_step + 1, …: `load` runs in
    `workers` processes, each keeping `buffer_size` batches ready, and `finish` (default: none) in
    this process's prefetch thread, off the consumer's path (uint8 -> float32 there means 4x
    fewer bytes cross processes, and the conversion overlaps the step).

    A `prefetch.Prefetcher` whose thread takes the workers' batches, so the interface is the same:
    `step`, `wait_seconds` (time `next()` waited), `load_seconds` (the thread's time per batch,
    mostly waiting for the workers), `close()`, use as a context manager, and an exception in
    `load` raised by the `next()` that would have returned its batch. `worker_seconds` sums the
    workers' own loading time: near `workers` × elapsed time means the workers are the bottleneck.
    """

    def __init__(self, load: Callable[[int], Any], start_step: int, *, workers: int, buffer_size: int = 2,
                 finish: Callable[[Any], Any] | None = None) -> None:
        import grain  # imported here: the thread prefetcher does not need it
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (0 means the thread prefetcher), got {workers}")
        self.check_arguments(start_step, buffer_size)  # before any process starts
        _absl_flags_ready()
        self.worker_seconds = 0.0
        steps = grain.MapDataset.range(start_step, _END).map(functools.partial(_timed, load))
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer_size)
        # No reading threads inside a worker: each loads one batch at a time into its buffer. (Grain's
        # default, 16 threads reading 500 elements ahead, made each worker 10-60x slower here.)
        serial = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        self._workers = iter(steps.to_iter_dataset(serial).mp_prefetch(options))
        self._finish = finish
        super().__init__(self._take, start_step, buffer_size=buffer_size)

    def _take(self, step: int) -> Any:
        """The next batch from the workers (the batch of `step`: both advance one by one)."""
        batch, seconds = next(self._workers)
        self.worker_seconds += seconds
        return batch if self._finish is None else self._finish(batch)

    def close(self) -> None:
        """Stops the prefetch thread and the worker processes; safe to call more than once."""
        super().close()
        self._workers.close()


def check_workers(workers: int) -> int:
    """`workers` as an int >= 0, or ValueError naming the problem."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: one loading thread), got {workers!r}")
    return int(workers)
