"""Throughput of the training loop on a config (default: configs/shapes32.py, the main job):
steps/s and the share of step time spent waiting for input.

It drives the loop's own pieces (the data prefetcher, the sharded batch, both compiled step
kinds chosen by the gate, the per-step metric fetch) for --steps steps after compiling and
warming up both step kinds, without checkpoints or samples. Prints one line:

    config=… devices=… global_batch=… steps=… steps_per_s=… median_step_s=… input_wait_share=…
    plain_median_s=… regularized_median_s=… batch_load_ms=…

Usage: python benchmarks/train_loop.py [--config configs/shapes32.py] [--steps 60] [--devices 1]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes32.py")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices")
    args = parser.parse_args()

    from isodiff_jax import runtime
    runtime.keep_freed_host_memory()
    import jax
    jax.config.update("jax_num_cpu_devices", args.devices)
    from isodiff_jax import config as config_lib, data
    from isodiff_jax.data import pipeline
    from isodiff_jax.train import loop, sharding
    from isodiff_jax.train.monitor import host_floats

    config = load_config(args.config)
    mesh = sharding.make_mesh()
    config_lib.validate(config, mesh.size)
    setup = loop.make_setup(config)
    steps = loop.compile_steps(config, setup, mesh)
    state = loop.fresh_state(config, setup, mesh)
    d, batch = config.data, config.training.global_batch_size
    source = data.make_source(d.name, resolution=d.resolution, seed=config.seed,
                              data_dir=d.data_dir or None, split=d.split)
    for kind, step in steps.items():  # compile and warm up each step kind
        for _ in range(2):
            x0 = sharding.global_batch(pipeline.load_batch(source, 0, seed=config.seed, global_batch=batch), mesh)
            state, metrics = step(state, x0)
            host_floats(metrics)

    loads = []
    for s in range(5):
        t0 = time.perf_counter()
        pipeline.load_batch(source, s, seed=config.seed, global_batch=batch, random_flip=d.random_flip)
        loads.append(time.perf_counter() - t0)

    times = {kind: [] for kind in steps}
    with pipeline.prefetch_batches(source, 0, seed=config.seed, global_batch=batch, random_flip=d.random_flip,
                                   buffer_size=d.prefetch) as batches:
        started = time.perf_counter()
        for s in range(args.steps):
            t0 = time.perf_counter()
            kind = loop.regularized_step(config, s)
            state, metrics = steps[kind](state, sharding.global_batch(next(batches), mesh))
            host_floats(metrics)
            times[kind].append(time.perf_counter() - t0)
        total = time.perf_counter() - started
        wait = batches.wait_seconds
    all_times = [t for ts in times.values() for t in ts]
    median = lambda ts: f"{statistics.median(ts):.3f}" if ts else "n/a"
    print(f"config={args.config} devices={mesh.size} global_batch={batch} steps={args.steps} "
          f"steps_per_s={args.steps / total:.3f} median_step_s={median(all_times)} "
          f"input_wait_share={wait / total:.4f} plain_median_s={median(times.get(False, []))} "
          f"regularized_median_s={median(times.get(True, []))} "
          f"batch_load_ms={1000 * statistics.median(loads):.1f}", flush=True)


if __name__ == "__main__":
    main()
