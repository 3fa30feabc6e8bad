"""What a user sees while training: a progress bar, TensorBoard scalars and images (tensorboardX,
no TensorFlow needed), EMA sample grids as PNG files. Only process 0 writes or prints."""
import json
import os
import time

import jax
import tqdm
from tensorboardX import SummaryWriter

from isodiff_jax import images


class Monitor:
    """Averages per-step metrics over logging intervals and reports them."""

    def __init__(self, workdir: str, *, total_steps: int, start_step: int, progress_bar: bool):
        self.lead = jax.process_index() == 0
        self.log_dir = os.path.join(workdir, "logs")
        self.sample_dir = os.path.join(workdir, "samples")
        self.evaluation_path = os.path.join(workdir, "evaluation.jsonl")
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")  # the scalars, for scripts
        if self.lead:  # lines after the step resumed from are trained, and logged, again
            for path in (self.metrics_path, self.evaluation_path):
                _drop_lines_after(path, start_step)
        self.writer = SummaryWriter(self.log_dir) if self.lead else None
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             disable=not (self.lead and progress_bar))
        self.last = {}  # the newest logged value of each metric (for the bar and the summary)
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def step(self, step: int) -> None:
        """Counts the step that ended at `step` (its metrics stay on the device until `flush`)."""
        self.interval_steps += 1
        self.bar.update(1)

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
            self.writer.flush()
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps({"step": step, **means}) + "\n")
        postfix = {"loss": f"{self.last['loss']:.4f}"} if "loss" in self.last else {}
        if "reg_loss" in self.last:
            postfix["iso"] = f"{self.last['reg_loss']:.3g}"
        if "steps_per_s" in self.last:
            postfix["steps/s"] = f"{self.last['steps_per_s']:.2f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        return means

    def samples(self, step: int, x0) -> str | None:
        """Saves (N, H, W, C) samples in [-1, 1] as samples/step_XXXXXXX.png; returns its path."""
        if not self.lead:
            return None
        pixels = images.to_uint8(x0)
        scale = max(1, 128 // pixels.shape[1])
        path = images.save_grid(os.path.join(self.sample_dir, f"step_{step:07d}.png"), pixels, scale=scale)
        self.writer.add_image("samples", images.grid(pixels), step, dataformats="HWC")
        self.writer.flush()
        return path

    def evaluation(self, step: int, results: dict) -> None:
        """Evaluator results at `step`: TensorBoard scalars "eval/<name>", one JSON line in
        workdir/evaluation.jsonl, and a short line under the progress bar."""
        if not self.lead:
            return
        for name, value in results.items():
            self.writer.add_scalar(f"eval/{name}", value, step)
        self.writer.flush()
        with open(self.evaluation_path, "a") as f:
            f.write(json.dumps({"step": step, **results}) + "\n")
        headline = {k: v for k, v in results.items() if "_t" not in k and not k.endswith("_pairs")}
        self.print(f"evaluation at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))

    def print(self, text: str) -> None:
        if self.lead:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _drop_lines_after(path: str, step: int) -> None:
    """Removes the JSON lines of `path` logged after `step` (an interrupted run logged them after
    its last checkpoint); the file is replaced atomically, and left alone when nothing goes."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) == len(lines):
        return
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
