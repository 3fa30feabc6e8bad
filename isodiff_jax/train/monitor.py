"""What a user sees while training: a progress bar, TensorBoard scalars and images (tensorboardX,
no TensorFlow needed), EMA sample grids as PNG files. Only process 0 writes or prints.

With a workdir in a bucket, the TensorBoard events are written to a local staging folder and
copied to `workdir/logs/` whole at every flush (tensorboardX's own bucket writer needs
TensorFlow's file system); the staging folder is deleted when the run ends.
"""
import json
import logging
import shutil
import tempfile
import time

import jax
from tensorboardX import SummaryWriter

from isodiff_jax import images, storage
from isodiff_jax.progress import StepBar

log = logging.getLogger(__name__)


class Monitor:
    """Averages per-step metrics over logging intervals and reports them."""

    def __init__(self, workdir: str, *, total_steps: int, start_step: int, progress_bar: bool):
        self.lead = jax.process_index() == 0
        self.log_dir = storage.join(workdir, "logs")
        self.sample_dir = storage.join(workdir, "samples")
        self.evaluation_path = storage.join(workdir, "evaluation.jsonl")
        self.metrics_path = storage.join(workdir, "metrics.jsonl")  # the scalars, for scripts
        if self.lead:  # lines after the step resumed from are trained, and logged, again
            for path in (self.metrics_path, self.evaluation_path):
                _drop_lines_after(path, start_step)
        self.staging = tempfile.mkdtemp(prefix="isodiff_tensorboard_") if self.lead and storage.is_url(workdir) \
            else None
        self.writer = SummaryWriter(self.staging or self.log_dir) if self.lead else None
        self.bar = StepBar(total_steps, initial=start_step, disable=not (self.lead and progress_bar))
        self.last = {}  # the newest logged value of each metric (for the bar and the summary)
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def begin(self) -> None:
        """Called just before the first step: the bar's clock starts here, after the compiles."""
        self.bar.start()
        self.interval_start = time.perf_counter()

    def step(self, step: int) -> None:
        """Counts the step that ended at `step` (its metrics stay on the device until `flush`)."""
        self.interval_steps += 1
        self.bar.dispatched()

    def synced(self) -> None:
        """Called when the host has waited for the device: the steps so far are done, and the bar
        moves by them (isodiff_jax.progress)."""
        self.bar.synced()

    def flush(self, step: int, means: dict, extra: dict | None = None) -> dict:
        """Writes the interval's metric means (plus `extra`) at `step` and starts a new interval."""
        elapsed = time.perf_counter() - self.interval_start
        means = dict(means)
        if self.interval_steps:
            means["steps_per_s"] = self.interval_steps / max(elapsed, 1e-9)
        self.last.update(means)
        means.update(extra or {})
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(name, value, step)
            self._flush_writer()
            storage.append_text(self.metrics_path, json.dumps({"step": step, **means}) + "\n")
        postfix = {"loss": f"{self.last['loss']:.4f}"} if "loss" in self.last else {}
        if "reg_loss" in self.last:
            postfix["iso"] = f"{self.last['reg_loss']:.3g}"
        if "steps_per_s" in self.last:
            postfix["steps/s"] = f"{self.last['steps_per_s']:.2f}"
        self.bar.set_postfix(postfix)
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        return means

    def samples(self, step: int, x0) -> str | None:
        """Saves (N, H, W, C) samples in [-1, 1] as samples/step_XXXXXXX.png; returns its path."""
        if not self.lead:
            return None
        pixels = images.to_uint8(x0)
        scale = max(1, 128 // pixels.shape[1])
        path = images.save_grid(storage.join(self.sample_dir, f"step_{step:07d}.png"), pixels, scale=scale)
        self.writer.add_image("samples", images.grid(pixels), step, dataformats="HWC")
        self._flush_writer()
        return path

    def evaluation(self, step: int, results: dict) -> None:
        """Evaluator results at `step`: TensorBoard scalars "eval/<name>", one JSON line in
        workdir/evaluation.jsonl, and a short line under the progress bar."""
        if not self.lead:
            return
        for name, value in results.items():
            self.writer.add_scalar(f"eval/{name}", value, step)
        self._flush_writer()
        storage.append_text(self.evaluation_path, json.dumps({"step": step, **results}) + "\n")
        headline = {k: v for k, v in results.items() if "_t" not in k and not k.endswith("_pairs")}
        self.print(f"evaluation at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))

    def print(self, text: str) -> None:
        if self.lead:
            self.bar.write(text)

    def _flush_writer(self) -> None:
        """Flushes the events; a staged events file is copied to the workdir whole."""
        self.writer.flush()
        if self.staging is not None:
            storage.copy_tree(self.staging, self.log_dir)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self._flush_writer()
            self.writer.close()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


def _record(line: str) -> dict | None:
    """One JSON line as a dict; None for a blank or damaged line (a file cut short by a full disk)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: str) -> list[dict]:
    """The intact records of a JSON-lines log (metrics.jsonl, evaluation.jsonl); damaged lines
    are skipped (the next resume drops them from the file, with a warning)."""
    text = storage.read_bytes(path).decode(errors="replace")
    return [record for line in text.splitlines() if (record := _record(line)) is not None]


def _drop_lines_after(path: str, step: int) -> None:
    """Removes the JSON lines of `path` logged after `step` (an interrupted run logged them after
    its last checkpoint), and damaged lines; the file is replaced atomically, and left alone when
    nothing goes."""
    if not storage.exists(path):
        return
    text = storage.read_bytes(path).decode(errors="replace")  # random bytes make damaged lines, not an error
    lines = text.splitlines(keepends=True)
    damaged = [line for line in lines if line.strip() and _record(line) is None]
    kept = [line.rstrip("\n") + "\n" for line in lines
            if (record := _record(line)) is not None and record.get("step", 0) <= step]
    if "".join(kept) == text:
        return
    if damaged:
        log.warning("dropped %d damaged line(s) of %s (cut short, or not a JSON object)", len(damaged), path)
    storage.write_text(path, "".join(kept))  # also ends the last line, which the next record would join
