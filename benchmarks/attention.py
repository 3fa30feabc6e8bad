"""Times one attention layer of the benchmark model (batch 8, 16 heads of dim 8 over 16×16 = 256
positions, float32) in the four ways a training step uses it, for this project's attention
(`isodiff_jax.unet._softmax_attention`) and the one it replaced on 2026-11-30 (the same
arithmetic, keys and values in (B, L, heads, d) layout, no barrier).

    forward       softmax(q kᵀ) v
    gradient      of <attention(q, k, v), c> with respect to q, k and v (the plain step)
    jvp           the tangent along (v, q, k) (the isometry loss's J u)
    second_order  the isometry loss's pattern: linearize, push a tangent and pull a cotangent
                  through the linearization, then differentiate all of it again

Medians over --iters calls after two warm-up calls; the variants alternate call by call, so drift
of a shared machine cancels. Prints one line per (variant, pass) and the ratios.

Usage: python benchmarks/attention.py [--iters N] [--batch B] [--positions L]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from isodiff_jax import runtime  # noqa: E402
from isodiff_jax.unet import _softmax_attention  # noqa: E402


def previous_attention(q, k, v):
    """This project's attention until 2026-11-30: normalised after the value product, like
    today's, but keys and values in (B, L, heads, d) layout."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return out / jnp.sum(weights, axis=-1).transpose(0, 2, 1)[..., None]


VARIANTS = {"previous": previous_attention, "ours": _softmax_attention}


def passes(fn, cotangent):
    """{pass name: jitted function of (q, k, v)}."""
    def gradient(q, k, v):
        return jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), (0, 1, 2))(q, k, v)

    def second_order(q, k, v):
        def loss(q, k, v):
            out, lin = jax.linearize(fn, q, k, v)
            pulled = jax.linear_transpose(lin, q, k, v)(cotangent)
            return (jnp.sum(lin(cotangent, cotangent, cotangent) ** 2)
                    + sum(jnp.sum(p * cotangent) for p in pulled) + jnp.sum(out * cotangent))
        return jax.grad(loss, (0, 1, 2))(q, k, v)

    return {"forward": jax.jit(fn), "gradient": jax.jit(gradient),
            "jvp": jax.jit(lambda q, k, v: jax.jvp(fn, (q, k, v), (v, q, k))),
            "second_order": jax.jit(second_order)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=8)
    args = parser.parse_args(argv)
    runtime.keep_freed_host_memory()  # before the arrays below, as train.py does
    if min(args.iters, args.batch, args.positions, args.heads, args.head_dim) < 1:
        parser.error("--iters, --batch, --positions, --heads and --head-dim must be >= 1")
    shape = (args.batch, args.positions, args.heads, args.head_dim)
    q, k, v, c = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(4))
    fns = {name: passes(fn, c) for name, fn in VARIANTS.items()}
    print(f"attention (B, L, heads, d) = {shape}, float32, {jax.devices()[0].platform}, "
          f"medians of {args.iters} alternated calls")
    for pass_name in fns["ours"]:
        for name in VARIANTS:  # compile and warm up
            for _ in range(2):
                jax.block_until_ready(fns[name][pass_name](q, k, v))
        times = {name: [] for name in VARIANTS}
        for i in range(args.iters):
            order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                t0 = time.perf_counter()
                jax.block_until_ready(fns[name][pass_name](q, k, v))
                times[name].append(time.perf_counter() - t0)
        medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{pass_name:13s} " + "  ".join(f"{name} {ms:7.2f} ms" for name, ms in medians.items())
              + f"  ours/previous {medians['ours'] / medians['previous']:.2f}", flush=True)


if __name__ == "__main__":
    main()
