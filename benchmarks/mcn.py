"""MCN of the benchmark model (6,472,195 parameters): matrix-free against dense, time and agreement.

J = ∂ pool(h)/∂x per sample (method.md §6), h the middle block's output (8×8×128) of
configs/bench_cpu32.py, average-pooled `--pool`× (8: 1×1×128, m = 128; 4: 2×2×128, m = 512),
x a noised shapes image x_t = q_sample(x0, t) (32×32×3, n = 3072), float32. In one run, for each pooling:

- dense: every sample's Jacobian from its smaller side in chunks of `--chunk-size` transposed
  products (rows by vjp, since m < n), then a float64 SVD on the host (the exact reference);
- matrix-free: Golub–Kahan–Lanczos over all samples at once (one batched jvp and one batched
  vjp per iteration), for each budget in `--iters` ("full" = q = min(m, n)).

Times are steady state, compile excluded (a first call compiles; compile = its time less the
steady median); host SVDs included. Dense: samples × the median time of one sample (Jacobian +
SVD); matrix-free: median of `--repeats` runs over all samples after the first. Agreement is the
relative error against dense of MCN, of the mean s_max and mean s_min, and of VoR over the 8
largest and 8 smallest values (what `spectrum_metrics` computes with k = 8); VoR over the whole
spectrum only where q = min(m, n).

Parameters: random initialisation from config.seed, unless --workdir names a trained run of the
benchmark config (its newest EMA parameters).

Usage: python benchmarks/mcn.py [--samples 64] [--pool 8] [--timestep 500]
       [--iters 16,32] [--repeats 3] [--chunk-size 64] [--workdir DIR]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from isodiff_jax import runtime  # noqa: E402

runtime.keep_freed_host_memory()  # before JAX allocates anything

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import bench_cpu32  # noqa: E402
from isodiff_jax import config as config_lib, data, diffusion  # noqa: E402
from isodiff_jax.data import pipeline  # noqa: E402
from isodiff_jax.analysis.measures import spectrum  # noqa: E402
from isodiff_jax.unet import UNet  # noqa: E402

VOR_ENDS = 8  # VoR over the top-8 and bottom-8 values, as spectrum_metrics(k=8) gives it
TARGET_ERROR, TARGET_SPEEDUP = 0.02, 5.0


def encoder(workdir):
    """(encode (x, t) -> h, description of the parameters) for the benchmark model."""
    if workdir:
        from isodiff_jax.analysis import load
        spec, params, step = load.load(workdir)
        return lambda x, t: spec.encode(params, x, t), f"EMA parameters of {workdir}, step {step}"
    config = bench_cpu32.get_config()
    model = config_lib.unet(config)
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    params = model.init(jax.random.PRNGKey(config.seed), x, jnp.zeros((1,), jnp.int32))
    return (lambda x, t: model.apply(params, x, t, method=UNet.encode),
            f"random initialisation (seed {config.seed}), untrained")


def noised_samples(count, timestep, seed=0):
    """x_t (count, 32, 32, 3) float32: shapes images 0..count-1 noised to `timestep`."""
    x0 = data.make_source("shapes", resolution=32, seed=seed).get(np.arange(count))
    x0 = jnp.asarray(pipeline.to_unit_range(x0))
    schedule = config_lib.schedule(bench_cpu32.get_config())
    eps = jax.random.normal(jax.random.PRNGKey(seed + 1), x0.shape)
    return diffusion.q_sample(schedule, x0, jnp.full((count,), timestep, jnp.int32), eps)


def timed(call, *args):
    start = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - start


def dense(fn, x, chunk_size):
    """(s (B, q) float64, compile_s, per-sample seconds after the first): the exact reference.

    compile_s is the first sample's time (which compiles) less the median of the others."""
    jacobian = spectrum.sample_jacobian_fn(lambda _, v: fn(v), x, chunk_size=chunk_size)
    sample = lambda b: np.linalg.svd(np.asarray(jacobian(None, x[b:b + 1]), np.float64), compute_uv=False)
    rows, times = zip(*(timed(sample, b) for b in range(x.shape[0])))
    return np.stack(rows), times[0] - statistics.median(times[1:]), times[1:]


def matrix_free(fn, x, key, num_iters, repeats):
    """(alpha, beta (B, num_iters), Ritz values (B, num_iters), compile_s, median_s).

    One untimed-for-the-median first run compiles; compile_s is its time less the median."""
    bidiagonalize = spectrum.bidiagonalize_fn(lambda _, v: fn(v), x, num_iters=num_iters)
    run = lambda: jax.block_until_ready(bidiagonalize(None, x, key))
    (alpha, beta), first = timed(run)
    times = []
    for _ in range(repeats):
        (alpha, beta), seconds = timed(run)
        ritz, svd_seconds = timed(spectrum.bidiagonal_singular_values, alpha, beta)
        times.append(seconds + svd_seconds)
    median_s = statistics.median(times)
    return np.asarray(alpha), np.asarray(beta), ritz, first - median_s, median_s


def ends(s, k=VOR_ENDS):
    return np.concatenate([s[:, :k], s[:, -k:]], axis=1)


def summary(s, rtol):
    """MCN, mean s_max, mean s_min (smallest non-zero) and VoR of the ends of s (B, c)."""
    cn = spectrum.condition_numbers(s)
    s_max = s.max(axis=1)
    return dict(mcn=float(np.mean(cn)), s_max=float(np.mean(s_max)), s_min=float(np.mean(s_max / cn)),
                vor_ends=spectrum.vor(ends(s)))


def relative_errors(got, ref):
    return {name: got[name] / ref[name] - 1.0 for name in ref}


def convergence(alpha, beta, reference, rtol, levels=(0.05, 0.02, 0.01)):
    """{level: fewest iterations j whose Ritz values give MCN within level of dense}, from one run."""
    errors = np.array([summary(spectrum.bidiagonal_singular_values(alpha[:, :j], beta[:, :j]), rtol)["mcn"]
                       / reference["mcn"] - 1.0 for j in range(2, alpha.shape[1] + 1)])
    return {level: 2 + int(np.argmax(np.abs(errors) <= level)) if np.any(np.abs(errors) <= level) else None
            for level in levels}


def spectrum_shape(s, rtol):
    """Figures that set how fast Lanczos finds s_min, from the dense spectra s (B, q)."""
    q = s.shape[1]
    cn = spectrum.condition_numbers(s)
    # Lanczos on J Jᵀ resolves λ_min = s_min² at a rate set by its gap relative to the spread.
    gap = (s[:, -2] ** 2 - s[:, -1] ** 2) / (s[:, 0] ** 2 - s[:, -1] ** 2)
    within = np.mean(np.sum(s <= 1.1 * s[:, -1:], axis=1))
    return (f"CN median {np.median(cn):.2f} (min {cn.min():.2f}, max {cn.max():.2f}); "
            f"s_max {np.mean(s[:, 0]):.4g}, s_min {np.mean(s[:, -1]):.4g}; bottom relative gap "
            f"(s_q-1² - s_q²)/(s_1² - s_q²) median {np.median(gap):.2e}; values within 10 % of s_min: "
            f"{within:.1f} of {q} on average")


def run_pool(encode, x, pool, args):
    """Prints one Markdown table (and diagnostics) for one pooling factor."""
    t_vec = lambda x: jnp.full((x.shape[0],), args.timestep, jnp.int32)
    fn = lambda x: spectrum.average_pool(encode(x, t_vec(x)), pool)
    m, n = spectrum.map_dims(fn, x)
    q, batch = min(m, n), x.shape[0]
    rtol = spectrum.nonzero_rtol(m, n, x.dtype)
    budgets = sorted({q if i == "full" else min(int(i), q) for i in args.iters.split(",")})
    print(f"\n## pool {pool}: m = {m}, n = {n}, q = min(m, n) = {q}, {batch} samples, t = {args.timestep}",
          flush=True)
    s_dense, compile_s, times = dense(fn, x, args.chunk_size)
    dense_s = batch * statistics.median(times)
    ref = summary(s_dense, rtol)
    print(f"dense: {batch} × median {statistics.median(times):.3f} s = {dense_s:.1f} s (measured sum of the "
          f"{batch - 1} after the first {sum(times):.1f} s); MCN {ref['mcn']:.4f}, "
          f"VoR {spectrum.vor(s_dense):.4f}", flush=True)
    print("spectrum: " + spectrum_shape(s_dense, rtol), flush=True)
    rows = [("dense", m, dense_s, compile_s, 1.0, None)]
    key = jax.random.key(args.seed)
    for num_iters in budgets:
        alpha, beta, ritz, compile_s, median_s = matrix_free(fn, x, key, num_iters, args.repeats)
        err = relative_errors(summary(ritz, rtol), ref)
        if num_iters == q:
            err["vor"] = spectrum.vor(ritz) / spectrum.vor(s_dense) - 1.0
        rows.append((f"matrix-free, {num_iters} it.", 2 * num_iters, median_s, compile_s, dense_s / median_s, err))
        print(f"  {num_iters} iterations: {median_s:.2f} s, MCN error {err['mcn']:+.2%}", flush=True)
    print_table(rows, m)
    needed = convergence(alpha, beta, ref, rtol)
    print("iterations for |MCN error| ≤ level (Ritz values of the leading blocks of the last run): "
          + ", ".join(f"{level:.0%}: {j}" for level, j in needed.items()))


def print_table(rows, m):
    print(f"\n| method | products per sample | time (s) | compile (s) | speed-up | MCN | mean s_max "
          f"| mean s_min | VoR ends {VOR_ENDS}+{VOR_ENDS} | VoR all |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    fmt = lambda e, name: f"{e[name]:+.2%}" if e and name in e else "—"
    for name, products, seconds, compile_s, speedup, err in rows:
        met = err and abs(err["mcn"]) <= TARGET_ERROR and speedup >= TARGET_SPEEDUP
        print(f"| {name} | {products} | {seconds:.2f} | {compile_s:.1f} | {speedup:.2f}×{' ✓' if met else ''} "
              f"| {fmt(err, 'mcn')} | {fmt(err, 's_max')} | {fmt(err, 's_min')} | {fmt(err, 'vor_ends')} "
              f"| {fmt(err, 'vor')} |")
    print(f"(dense needs m = {m} transposed products per sample; matrix-free 2 per iteration. "
          f"✓: within {TARGET_ERROR:.0%} of dense MCN and ≥ {TARGET_SPEEDUP:.0f}× faster.)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--pool", default="8", help="pooling factors of h, comma-separated (1, 2, 4 or 8)")
    parser.add_argument("--timestep", type=int, default=500)
    parser.add_argument("--iters", default="16,32",
                        help='Lanczos iteration budgets, comma-separated; "full" = min(m, n)')
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per matrix-free budget")
    parser.add_argument("--chunk-size", type=int, default=64, help="dense: products per vectorized chunk")
    parser.add_argument("--seed", type=int, default=0, help="Lanczos start vectors")
    parser.add_argument("--workdir", default="", help="a trained run of configs/bench_cpu32.py (default: random init)")
    args = parser.parse_args()
    encode, params = encoder(args.workdir)
    x = noised_samples(args.samples, args.timestep)
    print(f"benchmark model, {params}; jax {jax.__version__}, {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPU cores", flush=True)
    for pool in (int(p) for p in args.pool.split(",")):
        run_pool(encode, x, pool, args)


if __name__ == "__main__":
    main()
