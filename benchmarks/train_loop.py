"""Throughput of the training loop on a config (default: configs/shapes32.py, the main job):
steps/s with the metrics fetched to the host every step (the loop before the redesign) against
every --fetch_every steps (the loop now: metrics summed on the device), side by side, and the
share of time spent waiting for input.

It drives the loop's own pieces (the data prefetcher, the sharded batch, both compiled step
kinds chosen by the gate, the device-side metric totals) after compiling and warming up both
step kinds, without checkpoints or samples. The two fetch cadences alternate in --blocks blocks
of --steps steps each, so both see the same machine load; prints one line per block and a
summary line with the medians and their ratio.

Usage: python benchmarks/train_loop.py [--config configs/shapes32.py] [--steps 40] [--blocks 3]
       [--devices 4] [--fetch_every 20]
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path):
    sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_block(steps, setup, state, totals, batches, mesh, first_step, count, fetch_every):
    """count steps from first_step, fetching the totals every fetch_every steps; -> (state, totals, seconds)."""
    import jax
    from isodiff_jax import sharding
    from isodiff_jax.train import loop
    arguments = loop.step_arguments(setup, mesh)
    started = time.perf_counter()
    for s in range(first_step, first_step + count):
        x0 = sharding.global_batch(next(batches), mesh)
        state, totals = steps[loop.regularized_step(setup, s)](state, totals, x0, *arguments)
        if (s + 1 - first_step) % fetch_every == 0:
            jax.device_get(totals)
    jax.block_until_ready(totals)
    return state, totals, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes32.py")
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per fetch cadence")
    parser.add_argument("--fetch_every", type=int, default=20, help="the loop's cadence (logging.log_every_steps)")
    parser.add_argument("--devices", type=int, default=4, help="simulated CPU devices")
    args = parser.parse_args()

    from isodiff_jax import runtime
    runtime.keep_freed_host_memory()
    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)
    from isodiff_jax import config as config_lib, sharding
    from isodiff_jax.data import pipeline
    from isodiff_jax.train import loop

    config = load_config(args.config)
    mesh = sharding.make_mesh()
    config_lib.validate(config, mesh.size)
    setup = config_lib.train_setup(config)
    steps, fresh_totals = loop.compile_steps(setup, mesh)
    totals = fresh_totals()
    state = loop.fresh_state(setup, mesh)
    source, batch = setup.spec.data.source(), setup.settings.global_batch_size
    seconds = {1: [], args.fetch_every: []}
    with pipeline.prefetch_batches(source, 0, seed=config.seed, global_batch=batch,
                                   buffer_size=config.data.prefetch) as batches:
        state, totals, _ = run_block(steps, setup, state, totals, batches, mesh, 0, 4, 1)  # warm-up
        step = 4
        for block in range(args.blocks):
            for every in seconds:
                state, totals, took = run_block(steps, setup, state, totals, batches, mesh, step, args.steps, every)
                step += args.steps
                seconds[every].append(took)
                print(f"block {block} fetch_every={every}: {args.steps / took:.3f} steps/s", flush=True)
        wait = batches.wait_seconds
    rate = {every: args.steps / statistics.median(ts) for every, ts in seconds.items()}
    total = sum(sum(ts) for ts in seconds.values())
    print(f"config={args.config} devices={mesh.size} global_batch={batch} steps_per_block={args.steps} "
          f"blocks={args.blocks} steps_per_s_fetch_every_step={rate[1]:.3f} "
          f"steps_per_s_fetch_every_{args.fetch_every}={rate[args.fetch_every]:.3f} "
          f"ratio={rate[args.fetch_every] / rate[1]:.3f} input_wait_share={wait / total:.4f}", flush=True)


if __name__ == "__main__":
    main()
