"""Progress bars over device steps (isodiff_jax.progress): steady under asynchronous dispatch.

The host dispatches steps faster than the device runs them until the queue is full, then waits;
a bar moved at dispatch sees bursts and pauses. `StepBar` moves only when the host has synced
with the device, so its rate and remaining time come from finished steps. Time is simulated
(tqdm's clock replaced), so the tests are exact and not timing-dependent.
"""
import contextlib
import io
import re

import jax.numpy as jnp
import pytest
import tqdm

from isodiff_jax.progress import StepBar
from isodiff_jax.train.monitor import Monitor

TOTAL, EVERY, STEP_SECONDS = 2000, 20, 0.15


def _dispatch_times():
    """Host clock at each step's dispatch: each interval of EVERY steps, the first 12 go out at
    once (queue filling), the host then waits for the device until the interval's work is done."""
    t, times = 0.0, []
    for step in range(TOTAL):
        k = step % EVERY
        t += 0.0005 if k < 12 else (EVERY * STEP_SECONDS - 12 * 0.0005) / (EVERY - 12)
        times.append(t)
    return times


def _remaining(bar) -> float:
    d = bar.format_dict
    return (d["total"] - d["n"]) / d["rate"]


def test_the_remaining_time_is_steady_when_steps_are_dispatched_in_bursts(tmp_path):
    clock = {"t": 0.0}
    monitor = Monitor(str(tmp_path), total_steps=TOTAL, start_step=0, progress_bar=True)
    monitor.bar.bar.fp = tqdm.utils.DisableOnWriteError(io.StringIO(), tqdm_instance=monitor.bar.bar)
    monitor.bar.bar._time = lambda: clock["t"]
    monitor.begin()
    shown = []
    for step, t in enumerate(_dispatch_times()):
        clock["t"] = t
        monitor.step(step + 1)
        if (step + 1) % EVERY == 0:  # the loop's host sync at the logging cadence
            monitor.synced()
            shown.append(_remaining(monitor.bar.bar))
    monitor.close()
    steady = shown[3:-10]  # not the last updates, where the countdown itself drops by over 10 % each
    changes = [abs(b - a) / a for a, b in zip(steady, steady[1:]) if a > 0]
    assert max(changes) <= 0.2, max(changes)
    true_remaining = [(TOTAL - EVERY * (i + 1)) * STEP_SECONDS for i in range(len(shown))]
    assert abs(shown[50] - true_remaining[50]) / true_remaining[50] < 0.05  # and right, not only steady

    # the control: the same clock with the bar moved at each dispatch swings far more than 20 %
    bar = tqdm.tqdm(total=TOTAL, file=io.StringIO())
    bar._time = lambda: clock["t"]
    clock["t"] = 0.0
    bar.unpause()
    swings = []
    for step, t in enumerate(_dispatch_times()):
        clock["t"] = t
        bar.update(1)
        if bar.format_dict["rate"]:
            swings.append(_remaining(bar))
    bar.close()
    jumps = [abs(b - a) / a for a, b in zip(swings[100:], swings[101:]) if a > 0]
    assert max(jumps) > 0.5


def test_a_loop_that_reads_only_its_loss_moves_the_bar_where_it_reads_it():
    """StepBar.track, the oracle's and the digit classifier's loops: the first step compiles for
    5 s and each further step takes 0.1 s. The bar moves at the 50th, 100th and last step only,
    shows the loss read there, and its rate leaves the compile out (10 steps/s, not 120 / 16.9 s)."""
    clock = {"t": 0.0}
    bar = StepBar(120, desc="net")
    bar.bar.fp = tqdm.utils.DisableOnWriteError(io.StringIO(), tqdm_instance=bar.bar)
    bar.bar._time = lambda: clock["t"]
    bar.bar.smoothing = 0  # the rate since the start: what the clock's start decides
    moved_at = []
    for s in range(120):
        clock["t"] += 5.0 if s == 0 else 0.1
        before = bar.bar.n
        bar.track(jnp.float32(s / 10))
        if bar.bar.n != before:
            moved_at.append(bar.bar.n)
            assert bar.bar.postfix == f"loss={s / 10:.4f}"
    assert moved_at == [50, 100, 120]
    d = bar.bar.format_dict  # with smoothing 0 the bar shows n / elapsed
    assert d["n"] / d["elapsed"] == pytest.approx(120 / 11.9, rel=1e-6)  # 119 × 0.1 s after the first step
    bar.close()


@pytest.mark.slow  # compiles a digit classifier's step
def test_the_digit_classifier_shows_its_steps_as_they_finish():
    from isodiff_jax.analysis.networks import digit_classifier
    shown = io.StringIO()
    with contextlib.redirect_stderr(shown):
        digit_classifier.train(16, steps=120, progress=True)
    counts = {int(n) for n in re.findall(r"\| (\d+)/120 \[", shown.getvalue())}
    assert counts == {0, 50, 100, 120}, shown.getvalue()[-500:]
    assert "digit classifier" in shown.getvalue() and "loss=" in shown.getvalue()
