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
import argparse
import statistics
import sys
import time

import numpy as np

from train_loop import load_config


def override(config, assignment: str) -> None:
    """--config.section.field=value, parsed like the field's current value."""
    import ast
    path, value = assignment.removeprefix("--config.").split("=", 1)
    *sections, field = path.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[field] = value if isinstance(node[field], str) else ast.literal_eval(value)


def timed(fn, state, totals, x0, arguments, steps):
    import jax
    started = time.perf_counter()
    for _ in range(steps):
        state, totals = fn(state, totals, x0, *arguments)
    jax.block_until_ready(totals)
    return state, totals, (time.perf_counter() - started) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes16_iso.py")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per step kind")
    parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices")
    args, overrides = parser.parse_known_args()

    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)
    from isodiff_jax import config as config_lib, sharding
    from isodiff_jax.train import loop

    config = load_config(args.config)
    for assignment in overrides:
        override(config, assignment)
    mesh = sharding.make_mesh()
    config_lib.validate(config, mesh.size)
    setup = config_lib.train_setup(config)
    started = time.perf_counter()
    steps, fresh_totals = loop.compile_steps(setup, mesh)
    print(f"config={args.config} overrides={' '.join(overrides) or 'none'} devices={mesh.size} "
          f"compile_s={time.perf_counter() - started:.1f}", flush=True)
    totals, state = fresh_totals(), loop.fresh_state(setup, mesh)
    x0 = sharding.global_batch(np.random.default_rng(0).standard_normal(setup.batch_shape, np.float32), mesh)
    arguments = loop.step_arguments(setup, mesh)
    for regularized, fn in steps.items():
        state, totals, _ = timed(fn, state, totals, x0, arguments, 3)
        cpu, wall = time.process_time(), time.perf_counter()
        seconds = []
        for _ in range(args.repeats):
            state, totals, took = timed(fn, state, totals, x0, arguments, args.steps)
            seconds.append(took)
        share = (time.process_time() - cpu) / (time.perf_counter() - wall)
        print(f"kind={'regularized' if regularized else 'plain'} median_s={statistics.median(seconds):.4f} "
              f"cpu_per_wall={share:.2f}", flush=True)
    count, started = args.steps * args.repeats, time.perf_counter()
    for s in range(count):
        state, totals = steps[loop.regularized_step(setup, s)](state, totals, x0, *arguments)
    jax.block_until_ready(totals)
    print(f"gated steps_per_s={count / (time.perf_counter() - started):.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
