"""Times one training step of a config's model (the training loop's own step, `loop.make_step`),
at a given batch, float32 on CPU, with the step's FLOPs from XLA's cost analysis of the compiled
program (what an accelerator estimate divides by its throughput).

Each variant runs in its own process so that its peak RSS is its own. Prints one JSON line per
variant: variant, batch, median_s, compile_s, peak_rss_mb, flops, params. "plain" is the diffusion
step; "iso" the regularized step of the config's regularizer. The autoencoder of a latent model is
not part of the step (its weights are not needed: batches are latents).

Usage: python benchmarks/config_step.py --config configs/celebahq256_ldm.py [--batch 1] [--iters 3]
       [--variants plain,iso]
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(path: str, batch: int):
    sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.training.global_batch_size, config.optim.grad_accum_steps = batch, 1
    config.regularizer.p = 0.5 if config.regularizer.kind != "none" else config.regularizer.p
    return config


def worker(path: str, variant: str, batch: int, iters: int) -> None:
    from isodiff_jax import runtime
    runtime.keep_freed_host_memory()
    import jax

    from isodiff_jax import config as config_lib
    from isodiff_jax.train import loop
    from isodiff_jax.train import step as step_lib

    setup = config_lib.train_setup(_config(path, batch))
    step = jax.jit(loop.make_step(setup, variant == "iso"), donate_argnums=0)
    state = jax.jit(lambda k: step_lib.state_from_params(setup.spec.init_params(k), setup.optimizer))(
        jax.random.PRNGKey(0))
    x0 = jax.random.normal(jax.random.PRNGKey(1), setup.batch_shape)
    t0 = time.perf_counter()
    compiled = step.lower(state, x0).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state, metrics = compiled(state, x0)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, x0)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    finite = all(bool(jax.numpy.isfinite(v)) for v in jax.tree.leaves(metrics))
    print(json.dumps({"variant": variant, "batch": batch, "image_shape": list(setup.spec.image_shape),
                      "median_s": statistics.median(times), "times_s": times, "compile_s": compile_s,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "flops": float(cost.get("flops", float("nan"))),
                      "params": sum(x.size for x in jax.tree.leaves(state.params)), "finite": finite}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--variants", default="plain,iso")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.config, args.worker, args.batch, args.iters)
    for variant in args.variants.split(","):
        if variant not in ("plain", "iso"):
            parser.error(f"unknown variant {variant!r}: plain or iso")
        cmd = [sys.executable, __file__, "--config", args.config, "--batch", str(args.batch), "--iters",
               str(args.iters), "--worker", variant]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if done.returncode:
            sys.exit(f"variant {variant} failed:\n{done.stderr[-4000:]}")
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
