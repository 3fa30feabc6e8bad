"""Stopping a run cleanly on SIGTERM (a preemptible VM's or a scheduler's notice) or SIGINT (Ctrl-C).

While a run holds `StopSignals.installed()`, neither signal kills it: the loop asks `reached(step)`
before each step, and once a signal has come it saves the step reached and returns. Since the
data and randomness of each step are functions of (seed, step), the resumed run is bit for bit
the uninterrupted one.

One process: both signals set a flag here. Several processes must save the same step: SIGTERM
goes to JAX's preemption service (installed by `jax.distributed.initialize`, it catches SIGTERM
itself), which agrees on the step through the coordination service
(`multihost_utils.reached_preemption_sync_point`); SIGINT is recorded here and passed on to it as
a SIGTERM. A second signal while stopping changes nothing. Handlers can only be installed from
the main thread; elsewhere (a run in a worker thread) the signals keep their old meaning.
"""
import contextlib
import signal
import sys
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils

EXIT_STATUS = {"SIGTERM": 0, "SIGINT": 130}  # 130: 128 + SIGINT, the shell's status for Ctrl-C


def _preemption_service() -> bool:
    """Whether JAX's preemption service runs (a multi-process run joined by jax.distributed)."""
    from jax._src import distributed  # the only place that says whether the service was started
    return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


class StopSignals:
    """The stop requests of one run: `received` names the first signal this process got ("SIGTERM",
    "SIGINT"), or None."""

    def __init__(self):
        self.received: Optional[str] = None
        self._shared = False

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            print(f"{name} received while stopping: still saving, nothing else changes", file=sys.stderr, flush=True)
            return
        self.received = name
        print(f"{name} received: finishing the current step, then saving it", file=sys.stderr, flush=True)
        if self._shared and number != signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)  # to the preemption service's own handler

    @contextlib.contextmanager
    def installed(self):
        """Handles SIGTERM and SIGINT inside the block (from the main thread only), and restores
        the previous handlers after it."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._shared = _preemption_service()
        numbers = [signal.SIGINT] if self._shared else [signal.SIGTERM, signal.SIGINT]
        previous = {n: signal.signal(n, self._handle) for n in numbers}
        try:
            yield self
        finally:
            for n, handler in previous.items():
                signal.signal(n, handler)

    def reached(self, step: int) -> bool:
        """Whether the run should stop before `step` (save it and return). Several processes: call
        it before every step with the same `step` on all of them; they all stop at the same one."""
        if self._shared:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    @property
    def reason(self) -> str:
        return self.received or "SIGTERM"  # a process told by the preemption service got no signal itself
