"""Seconds per training step of each step kind (plain: t < pT; regularized: t >= pT, with the
isometry loss) of a config, and the compile time of both, on one process's devices.

Each kind runs 3 warm-up steps, then --repeats blocks of --steps steps; prints one line per kind
with the median seconds per step and the process's CPU time over wall time while it ran (2.0:
both cores busy), then the steps/s of the kinds alternated as the gate alternates them in a run.
XLA options come from the environment (XLA_FLAGS), so two settings compare side by side as two
runs of this script on an idle machine. Overrides are the config's fields, as train.py takes them.

Usage: python benchmarks/step_kinds.py [--config configs/shapes16_iso.py] [--steps 10]
       [--repeats 5] [--devices 1] [--config.training.global_batch_size=16 ...]
"""
import os
import statistics
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs import configs.*
# the config and its --config.* overrides exactly as train.py reads them
CONFIG = config_flags.DEFINE_config_file("config", "configs/shapes16_iso.py", "experiment config file")
STEPS = flags.DEFINE_integer("steps", 10, "steps per timed block")
REPEATS = flags.DEFINE_integer("repeats", 5, "timed blocks per step kind")
DEVICES = flags.DEFINE_integer("devices", 1, "simulated CPU devices")


def timed(fn, state, totals, x0, arguments, steps):
    import jax
    started = time.perf_counter()
    for _ in range(steps):
        state, totals = fn(state, totals, x0, *arguments)
    jax.block_until_ready(totals)
    return state, totals, (time.perf_counter() - started) / steps


def main(argv):
    del argv
    import jax
    jax.config.update("jax_num_cpu_devices", DEVICES.value)
    from isodiff_jax import config as config_lib, sharding
    from isodiff_jax.train import loop

    config = CONFIG.value
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    mesh = sharding.make_mesh()
    config_lib.validate(config, mesh.size)
    setup = config_lib.train_setup(config)
    started = time.perf_counter()
    steps, fresh_totals = loop.compile_steps(setup, mesh)
    print(f"config={config_flags.get_config_filename(flags.FLAGS['config'])} overrides={' '.join(overrides) or 'none'} devices={mesh.size} "
          f"compile_s={time.perf_counter() - started:.1f}", flush=True)
    totals, state = fresh_totals(), loop.fresh_state(setup, mesh)
    x0 = sharding.global_batch(np.random.default_rng(0).standard_normal(setup.batch_shape, np.float32), mesh)
    arguments = loop.step_arguments(setup, mesh)
    for regularized, fn in steps.items():
        state, totals, _ = timed(fn, state, totals, x0, arguments, 3)
        cpu, wall = time.process_time(), time.perf_counter()
        seconds = []
        for _ in range(REPEATS.value):
            state, totals, took = timed(fn, state, totals, x0, arguments, STEPS.value)
            seconds.append(took)
        share = (time.process_time() - cpu) / (time.perf_counter() - wall)
        print(f"kind={'regularized' if regularized else 'plain'} median_s={statistics.median(seconds):.4f} "
              f"cpu_per_wall={share:.2f}", flush=True)
    count, started = STEPS.value * REPEATS.value, time.perf_counter()
    for s in range(count):
        state, totals = steps[loop.regularized_step(setup, s)](state, totals, x0, *arguments)
    jax.block_until_ready(totals)
    print(f"gated steps_per_s={count / (time.perf_counter() - started):.3f}", flush=True)


if __name__ == "__main__":
    app.run(main)
