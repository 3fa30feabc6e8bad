"""Times the training steps of the paper's 256² models on one accelerator (issue 13, item 2).

For each model config (configs/celebahq256.py, the pixel DDPM; configs/celebahq256_ldm.py, the
LDM U-Net on 64×64×3 latents, when that file exists), compute dtype (bfloat16: float32
parameters and optimizer state; float32), remat policy (model.remat) and step kind (plain: the
diffusion loss; iso: plus the isometry loss, t in [pT, T)), it finds the largest batch that fits
(doubling from --start_batch, catching out-of-memory, halving if the first does not fit), then
prints one line:

    config=… step=plain|iso dtype=… remat=… batch=B step_s=… images_per_s=… tflop_per_step=…
    mfu=… peak_mem_gb=… compile_s=… flops_source=compiled|lowered

  tflop_per_step  the step's FLOPs from the compiled program's cost analysis
                  (`jitted.lower(...).compile().cost_analysis()`; the lowered, pre-optimisation
                  count where the compiled one is missing or implausibly low, as XLA:GPU has
                  reported for dots); with remat it includes the recomputation.
  mfu             FLOPs / (step_s × the chip's peak), the peak from PEAK_TFLOPS by
                  `jax.devices()[0].device_kind` (dense bf16 tensor-core peak, also for float32
                  runs), or --peak_tflops; "n/a" on an unknown chip (e.g. CPU).
  peak_mem_gb     `device.memory_stats()["peak_bytes_in_use"]` of this process so far (every
                  variant runs in its own process, so it is this variant's, the failed larger
                  batches of its search included); on CPU the process's peak RSS.
  compile_s       lowering + compilation of the step at the reported batch.

Parameters are random (numpy, variance 1/fan-in), the data random images: the timing does not
depend on them. Latent-diffusion steps start from latents (the frozen encoder is not timed).
Every variant is a subprocess; the whole run stops starting new work when --budget_s (default
450 s) would be exceeded, printing what it skipped.

    python benchmarks/accelerator.py                                   # the full run, ≤ 8 minutes
    python benchmarks/accelerator.py --config configs/test.py --quick   # CPU smoke test

Uses only APIs that jax 0.11.2 has as well as 0.12.
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
DEFAULT_CONFIGS = ("configs/celebahq256.py", "configs/celebahq256_ldm.py")
# dense bf16 peak, TFLOP/s, by a substring of device_kind (first match wins: "H100 PCIe" before "H100")
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("TPU v4", 275.0),
               ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0))
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM")


def peak_tflops(device_kind: str):
    """The chip's dense bf16 peak in TFLOP/s, or None when PEAK_TFLOPS does not know it."""
    return next((peak for name, peak in PEAK_TFLOPS if name in device_kind), None)


def is_out_of_memory(error: BaseException) -> bool:
    return any(marker in str(error) for marker in OOM_MARKERS)


def largest_batch(trial, start: int, max_batch: int, time_left):
    """The largest batch b (a power-of-two multiple or fraction of start) for which trial(b)
    returns without running out of memory: doubles while it fits, halves while it does not.
    -> (b, trial(b)'s result), or (None, None) when not even batch 1 fits. trial(b) raises an
    out-of-memory error (see is_out_of_memory) when b does not fit; time_left() false stops
    the doubling early."""
    b, result, fitted = start, None, False
    while b >= 1 and not fitted:  # halve until it fits
        try:
            result, fitted = trial(b), True
        except Exception as error:  # noqa: BLE001 (only out-of-memory errors are expected)
            if not is_out_of_memory(error):
                raise
            b //= 2
    if not fitted:
        return None, None
    while b == start or fitted == "doubled":  # it fitted at once: double while it fits
        if 2 * b > max_batch or not time_left():
            break
        try:
            result, b, fitted = trial(2 * b), 2 * b, "doubled"
        except Exception as error:  # noqa: BLE001
            if not is_out_of_memory(error):
                raise
            break
    return b, result


def _flops(stage) -> float:
    """'flops' of a Lowered's or Compiled's cost_analysis(): a dict, or a list of one dict in
    older jax; -1 when absent."""
    try:
        cost = stage.cost_analysis()
    except Exception:  # noqa: BLE001 (not every backend implements it)
        return -1.0
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost.get("flops", -1.0)) if cost else -1.0


def load_config(path: str, dtype: str, remat: str, batch: int):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # config files import configs.default
    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.dtype, config.model.remat = dtype, remat
    config.training.global_batch_size = batch
    config.optim.grad_accum_steps = 1
    return config


def _random_params(abstract, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    draw = lambda a: (rng.standard_normal(a.shape, np.float32) / np.sqrt(max(1, int(np.prod(a.shape[:-1]))))
                      ).astype(a.dtype)
    import jax
    return jax.tree.map(draw, abstract)


def compile_step(config, regularized: bool):
    """-> (compiled step (state, x0) -> (state, metrics), state, x0, compile_s, flops, flops_source)."""
    import jax
    import jax.numpy as jnp

    from isodiff_jax import config as config_lib
    from isodiff_jax.train import loop
    from isodiff_jax.train import step as step_lib

    setup = config_lib.train_setup(config)
    kinds = loop.step_kinds(setup)
    if regularized not in kinds:
        raise ValueError(f"{config.regularizer.kind=} and p={config.regularizer.p}: no such step kind")
    params = jax.device_put(_random_params(setup.spec.abstract_params()))
    state = step_lib.state_from_params(params, setup.optimizer)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), setup.batch_shape, jnp.float32, -1, 1)
    t0 = time.perf_counter()
    from isodiff_jax import sharding
    step = loop.make_step(setup, regularized)
    key, weight = loop.step_arguments(setup, sharding.make_mesh(jax.devices()[:1]))
    lowered = jax.jit(lambda state, x0: step(state, x0, key, weight), donate_argnums=0).lower(state, x0)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops, source = _flops(compiled), "compiled"
    lowered_flops = _flops(lowered)
    if flops <= 0 or flops < 0.5 * lowered_flops:
        flops, source = lowered_flops, "lowered"
    return compiled, state, x0, compile_s, flops, source


def time_step(compiled, state, x0, iters: int):
    """Median seconds of `iters` steps after one warm-up step; checks the metrics are finite."""
    import jax
    import numpy as np
    state, metrics = compiled(state, x0)
    jax.block_until_ready(state)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, x0)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    if not all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics)):
        raise FloatingPointError(f"non-finite metrics {jax.device_get(metrics)}")
    return statistics.median(times)


def peak_memory_gb() -> float:
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # CPU: the peak RSS (KiB)


def measure(config_path: str, step: str, dtype: str, remat: str, *, batch=None, start_batch=8, max_batch=1024,
            iters=5, deadline=None, peak=None) -> dict:
    """One variant: the largest batch that fits (or `batch`), timed. -> the printed fields."""
    import jax
    regularized = step == "iso"
    time_left = lambda: deadline is None or time.time() < deadline

    def trial(b):
        compiled, state, x0, compile_s, flops, source = compile_step(load_config(config_path, dtype, remat, b),
                                                                     regularized)
        return time_step(compiled, state, x0, iters), compile_s, flops, source

    if batch:
        found, result = batch, trial(batch)
    else:
        found, result = largest_batch(trial, start_batch, max_batch, time_left)
        if found is None:
            return {"config": _name(config_path), "step": step, "dtype": dtype, "remat": remat, "batch": 0,
                    "note": "batch 1 does not fit"}
    step_s, compile_s, flops, source = result
    kind = jax.devices()[0].device_kind
    peak = peak or peak_tflops(kind)
    return {"config": _name(config_path), "step": step, "dtype": dtype, "remat": remat, "batch": found,
            "step_s": step_s, "images_per_s": found / step_s, "tflop_per_step": flops / 1e12,
            "mfu": flops / (step_s * peak * 1e12) if peak and flops > 0 else None,
            "peak_mem_gb": peak_memory_gb(), "compile_s": compile_s, "flops_source": source, "device": kind}


def _name(config_path: str) -> str:
    return os.path.splitext(os.path.basename(config_path))[0]


def format_line(r: dict) -> str:
    if "step_s" not in r:
        return " ".join(f"{k}={v}" for k, v in r.items())
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.3f}"
    return (f"config={r['config']} step={r['step']} dtype={r['dtype']} remat={r['remat']} batch={r['batch']} "
            f"step_s={r['step_s']:.4f} images_per_s={r['images_per_s']:.2f} tflop_per_step={r['tflop_per_step']:.4g} "
            f"mfu={mfu} peak_mem_gb={r['peak_mem_gb']:.2f} compile_s={r['compile_s']:.1f} "
            f"flops_source={r['flops_source']}")


def variants(args) -> list:
    """(config, step, dtype, remat) in the order they run: the most wanted first, so that the
    budget cuts the least wanted."""
    out = []
    for config in args.configs.split(","):
        if not os.path.exists(os.path.join(ROOT, config)):
            print(f"skipped {config}: the file does not exist", flush=True)
            continue
        for dtype in args.dtypes.split(","):
            for remat in args.remats.split(","):
                for step in args.steps.split(","):
                    out.append((config, step, dtype, remat))
    return out


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", "--config", default=",".join(DEFAULT_CONFIGS), help="comma-separated config files")
    p.add_argument("--steps", default="plain,iso")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--remats", default="none,blocks")
    p.add_argument("--batch", type=int, default=0, help="a fixed batch (no search)")
    p.add_argument("--start_batch", type=int, default=8)
    p.add_argument("--max_batch", type=int, default=1024)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--budget_s", type=float, default=450.0, help="start no new variant or trial after this")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="override the chip's peak")
    p.add_argument("--cache_dir", default="", help="a persistent compilation cache (a rerun compiles less)")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 2, one timed step, float32, no remat")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def _worker(args) -> None:
    """Runs one variant (this process) and prints its result as a JSON line."""
    import jax
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    config, step, dtype, remat = json.loads(args.worker)
    deadline = time.time() + args.budget_s
    r = measure(config, step, dtype, remat, batch=args.batch or None, start_batch=args.start_batch,
                max_batch=args.max_batch, iters=args.iters, deadline=deadline, peak=args.peak_tflops or None)
    print("RESULT " + json.dumps(r), flush=True)


def main(argv=None) -> list:
    args = parser().parse_args(argv)
    if args.quick:
        args.batch, args.iters, args.dtypes, args.remats = args.batch or 2, 1, "float32", "none"
    if args.worker:
        return _worker(args)
    start = time.time()
    results, last = [], 0.0
    for variant in variants(args):
        left = args.budget_s - (time.time() - start)
        if left < 1.2 * last:  # the previous variant's time, as the estimate of this one's
            print(f"skipped config={variant[0]} step={variant[1]} dtype={variant[2]} remat={variant[3]}: "
                  f"{left:.0f} s of --budget_s left", flush=True)
            continue
        t0 = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(variant), "--budget_s", str(left),
               "--start_batch", str(args.start_batch), "--max_batch", str(args.max_batch), "--iters", str(args.iters),
               "--batch", str(args.batch), "--peak_tflops", str(args.peak_tflops), "--cache_dir", args.cache_dir]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(left, 1) + 120)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"failed config={variant[0]} step={variant[1]} dtype={variant[2]} remat={variant[3]}: "
                  f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}", flush=True)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(format_line(results[-1]), flush=True)
        last = time.time() - t0
    if results:
        print(f"device={results[0].get('device')} total_s={time.time() - start:.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
