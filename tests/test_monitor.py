"""The training progress bar: steady under asynchronous dispatch.

The host dispatches steps faster than the device runs them until the queue is full, then waits;
a bar moved at dispatch sees bursts and pauses. The Monitor moves it only when the host has
synced with the device (`Monitor.synced`), so its rate and remaining time come from finished
steps. Time is simulated (tqdm's clock replaced), so the test is exact and not timing-dependent.
"""
import io

import tqdm

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
    monitor.bar.fp = tqdm.utils.DisableOnWriteError(io.StringIO(), tqdm_instance=monitor.bar)
    monitor.bar._time = lambda: clock["t"]
    monitor.begin()
    shown = []
    for step, t in enumerate(_dispatch_times()):
        clock["t"] = t
        monitor.step(step + 1)
        if (step + 1) % EVERY == 0:  # the loop's host sync at the logging cadence
            monitor.synced()
            shown.append(_remaining(monitor.bar))
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
