"""A `jax.profiler` trace of chosen training steps (`config.logging.profile_steps=START,STOP`):
steps START..STOP-1 (the step counter before each step), on process 0 only, written to
`workdir/profile/plugins/profile/<time>/` as XPlane (TensorBoard's profile plugin) and as a
Perfetto trace (`perfetto_trace.json.gz`, opened by ui.perfetto.dev).

The trace is written locally first and copied into the workdir when it stops, so a workdir in
a bucket gets it too (the profiler writes through its own file layer, which knows no emulator
and no gcsfs credentials). The device is synced at both ends so that the trace holds exactly
those steps' work, not the asynchronous tail of earlier ones.
"""
import shutil
import tempfile

import jax

from isodiff_jax import storage


class StepProfiler:
    """Starts and stops the trace around the steps [start, stop) of a run."""

    def __init__(self, workdir: str, steps: tuple):
        self.directory = storage.join(workdir, "profile")
        self.steps = tuple(steps) if steps and jax.process_index() == 0 else ()
        self.staging = None

    def before_step(self, step: int, state) -> None:
        if self.steps and step == self.steps[0]:
            jax.block_until_ready(state)
            self.staging = tempfile.mkdtemp(prefix="isodiff_profile_")
            jax.profiler.start_trace(self.staging, create_perfetto_trace=True)

    def after_step(self, done: int, state) -> None:
        """`done`: the step counter after the step; stops the trace after step stop - 1."""
        if self.staging is not None and done >= self.steps[1]:
            self.stop(state)

    def stop(self, state=None) -> None:
        """Ends a trace under way (also when the run stops early) and copies it to the workdir."""
        if self.staging is None:
            return
        if state is not None:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        try:
            storage.copy_tree(self.staging, self.directory)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
