"""A progress bar over steps that run on an accelerator.

JAX dispatches steps asynchronously: the host queues them faster than the device runs them until
the queue is full, then waits. A bar moved at each dispatch sees bursts and pauses, and its rate
and remaining time swing (1:25 to 9:59 within a second, during `make run`). `StepBar` counts
dispatched steps and moves the bar only where the host has waited for the device (it read a loss,
saved a checkpoint), so the rate and the remaining time come from finished steps.
"""
import jax
import tqdm


class StepBar:
    """`dispatched()` after each step is queued, `synced(**postfix)` after the host has read a
    value of the newest step (so every step counted so far is done), `start()` once the first
    step's compile is over (the rate then leaves the compile out)."""

    def __init__(self, total: int, *, desc: str | None = None, initial: int = 0, disable: bool = False):
        self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                             disable=disable)
        self.unshown = 0  # dispatched since the bar last moved
        self.initial, self.total = initial, total
        self.done = initial  # steps dispatched (a disabled tqdm bar does not count them)

    def start(self) -> None:
        self.bar.unpause()

    def dispatched(self, steps: int = 1) -> None:
        self.unshown += steps
        self.done += steps

    def set_postfix(self, values: dict) -> None:
        """Shown from the bar's next move on."""
        self.bar.set_postfix(values, refresh=False)

    def synced(self, **postfix) -> None:
        if postfix:
            self.set_postfix(postfix)
        self.bar.update(self.unshown)
        self.unshown = 0

    def track(self, loss, every: int = 50) -> None:
        """For a loop that reads nothing else from the device: counts one more step, whose loss is
        the device scalar `loss`. The first step's end (its compile included) starts the clock;
        every `every`-th step and the last read the loss, which waits for the device, and move
        the bar with the loss shown."""
        first = self.done == self.initial
        self.dispatched()
        if first:
            jax.block_until_ready(loss)
            self.start()
        if self.done % every == 0 or self.done == self.total:
            self.synced(loss=f"{float(loss):.4f}")

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.synced()
        self.bar.close()
