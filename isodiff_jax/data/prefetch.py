"""A background prefetcher: `Prefetcher` loads the batches of the next steps in a thread while
the devices compute (`workers.WorkerPrefetcher` does it with processes, behind the same
interface)."""
import queue
import threading
import time
from typing import Any, Callable, Self


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
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")

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
