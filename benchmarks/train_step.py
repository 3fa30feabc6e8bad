"""Times one training step of the benchmark model (6,472,195 parameters), batch 8, 32×32, float32.

Each variant runs in its own process so that its peak RSS is its own. Prints one line per variant:

    variant=NAME median_s=… compile_s=… peak_rss_mb=… ratio_to_plain=… compile_rss_mb=… step_rss_mb=…

peak_rss_mb is the whole process's peak (XLA's compilation included); compile_rss_mb is the
process's peak at the end of compilation, before the step first runs; step_rss_mb is the peak
while the compiled step runs, measured after releasing freed heap memory and resetting the
kernel's high-water mark (Linux only; "n/a" elsewhere). Like the training loop, a worker hands
freed heap memory back to the OS after compiling and after its first step (--no-release: it
does not). --remat names the U-Net's rematerialisation policy (isodiff_jax.unet.REMAT_POLICIES).

Usage: python benchmarks/train_step.py [--variants plain,sphere] [--iters N] [--devices D]
       [--onednn] [--default-malloc] [--no-attention] [--remat POLICY] [--no-release]
       [--previous-attention]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name -> Regularizer keyword arguments (None: plain diffusion step)
    "plain": None,
    "sphere": dict(kind="sphere"),
    "sphere_jvp_jvp": dict(kind="sphere", estimator="jvp_jvp"),
    "sphere_chart": dict(kind="sphere", form="chart"),
    "euclidean": dict(kind="euclidean"),
    "path_length": dict(kind="path_length"),
}
BENCH_MODEL = dict(block_out_channels=(64, 128, 128), attention_levels=(False, True, False),
                   layers_per_block=2, attention_head_dim=8, norm_num_groups=32)


def _release_and_reset_peak_rss():
    """Returns freed heap memory to the OS and resets VmHWM; False where that is unsupported."""
    from isodiff_jax import runtime
    if not runtime.release_freed_host_memory():
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb():
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def worker(name, iters, batch, devices, keep_memory, attention, remat, release, previous_attention):
    """Runs in a fresh process: compile, warm up, time `iters` steps; prints a JSON line."""
    from isodiff_jax import runtime
    if keep_memory:
        runtime.keep_freed_host_memory()
    import jax
    jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import resource
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from isodiff_jax import diffusion
    from isodiff_jax.train import step as train_step
    from isodiff_jax import unet
    from isodiff_jax.unet import UNet

    if previous_attention:  # the attention the step used before 2026-11-30 (benchmarks/attention.py)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from attention import previous_attention as attention_fn
        unet._softmax_attention = attention_fn

    fields = {**BENCH_MODEL, "remat": remat}
    model = UNet(**fields) if attention else UNet(
        **{**fields, "attention_levels": (False, False, False), "mid_attention": False})
    schedule = diffusion.make_schedule("linear", 1000)
    optimizer = train_step.make_optimizer(1e-4, weight_decay=1e-6)
    reg = VARIANTS[name]
    step = train_step.make_train_step(
        model, schedule, optimizer,
        regularizer=train_step.Regularizer(**reg) if reg else None,
        t_range=(500, 1000) if reg else (0, 1000))
    mesh = Mesh(jax.devices()[:devices], ("data",))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = train_step.init_state(model, optimizer, jax.random.PRNGKey(0), (batch, 32, 32, 3))
    state = jax.device_put(state, replicated)
    x0 = jax.device_put(jax.random.uniform(jax.random.PRNGKey(1), (batch, 32, 32, 3), minval=-1, maxval=1),
                        sharded)
    key = jax.random.PRNGKey(2)
    jitted = jax.jit(step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, x0, key).compile()
    compile_s = time.perf_counter() - t0
    compile_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if release:  # as the training loop does after compiling
        runtime.release_freed_host_memory()
    for i in range(2):  # warm-up
        state, metrics = compiled(state, x0, key)
        if release and i == 0:  # as the training loop does after the first step
            jax.block_until_ready(state)
            runtime.release_freed_host_memory()
    jax.block_until_ready(state)
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the reset
    can_reset = _release_and_reset_peak_rss()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, x0, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    assert all(bool(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)), metrics
    peak_mb = max(process_peak_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"variant": name, "median_s": statistics.median(times), "compile_s": compile_s,
                      "peak_rss_mb": peak_mb, "compile_rss_mb": compile_peak_mb,
                      "step_rss_mb": _vm_hwm_mb() if can_reset else None}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices the batch is split over")
    parser.add_argument("--onednn", action="store_true",
                        help="XLA's experimental oneDNN custom calls (can fall back to a slow reference matmul)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default malloc settings (see isodiff_jax/runtime.py)")
    parser.add_argument("--no-attention", action="store_true",
                        help="the same model without its attention blocks (to see what attention costs)")
    parser.add_argument("--remat", default="none", help="the U-Net's remat policy (isodiff_jax.unet.REMAT_POLICIES)")
    parser.add_argument("--previous-attention", action="store_true",
                        help="the attention implementation replaced on 2026-11-30 (benchmarks/attention.py)")
    parser.add_argument("--no-release", action="store_true",
                        help="skip the training loop's release of freed heap memory after compiling and after "
                             "the first step (isodiff_jax.runtime.release_freed_host_memory)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.iters, args.batch, args.devices, not args.default_malloc,
                      not args.no_attention, args.remat, not args.no_release, args.previous_attention)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.batch % args.devices:
        parser.error(f"--batch {args.batch} does not divide over --devices {args.devices}")
    env = dict(os.environ)
    if args.onednn:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_experimental_onednn_custom_call=true").strip()
    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--worker", name, "--iters", str(args.iters),
               "--batch", str(args.batch), "--devices", str(args.devices), "--remat", args.remat]
        cmd += ["--default-malloc"] if args.default_malloc else []
        cmd += ["--no-attention"] if args.no_attention else []
        cmd += ["--no-release"] if args.no_release else []
        cmd += ["--previous-attention"] if args.previous_attention else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"variant {name} failed:\n{proc.stderr[-4000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        plain = results.get("plain")
        ratio = f"{r['median_s'] / plain['median_s']:.2f}" if plain else "n/a"
        print(f"variant={name} median_s={r['median_s']:.3f} compile_s={r['compile_s']:.1f} "
              f"peak_rss_mb={r['peak_rss_mb']:.0f} ratio_to_plain={ratio} compile_rss_mb={r['compile_rss_mb']:.0f} "
              f"step_rss_mb={r['step_rss_mb'] or float('nan'):.0f}", flush=True)


if __name__ == "__main__":
    main()
