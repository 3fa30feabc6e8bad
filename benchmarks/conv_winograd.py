"""Times the 3×3 convolutions of the benchmark model (configs/bench_cpu32.py, batch 8) as XLA:CPU
runs them in float32, as Winograd F(2×2, 3×3) written in JAX, and as XLA:CPU runs them on
bfloat16 inputs (float32 accumulation), in the passes a training step needs. Issue 13, item 1:
the plain step is bound by convolutions at the machine's float32 peak; Winograd's transforms cut
a 3×3 convolution's multiplications 2.25×, and bfloat16 dot products are twice as wide on CPUs
with AVX-512 BF16. This measures whether either reaches the wall clock. A last line times the
matrix product a convolution becomes as patches × weights, in float32 and in bfloat16.

    forward          conv(x, w)
    input_gradient   the vjp with respect to x (what backpropagation asks of each layer)
    weight_gradient  the vjp with respect to w
    gradient         both, from one vjp (a layer's share of the plain step's backward pass)

Medians over --iters calls after one warm-up call; the variants alternate call by call, so
drift of a shared machine cancels. Prints, per shape, each variant's largest error relative to
XLA's float32 output, then per pass each variant's time and its speed-up xla/variant (> 1: the
variant is faster).

Usage: python benchmarks/conv_winograd.py [--iters N] [--batch B] [--shapes HxWxCINxCOUT,...]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from isodiff_jax import runtime  # noqa: E402

# Lavin & Gray (2016), F(2, 3): y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for a 4×4 input tile d and 3×3 filter g.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])

# The benchmark model's stride-1 3×3 convolutions (H, W, C_in, C_out): levels of 64, 128, 128
# channels at 32², 16², 8²; the up path's first convolutions see the skip connection concatenated.
MODEL_SHAPES = ((32, 32, 64, 64), (32, 32, 128, 64), (16, 16, 128, 128), (16, 16, 256, 128),
                (8, 8, 128, 128))


def _mix(parts: list, matrix: np.ndarray) -> list:
    """[Σ_r matrix[k, r] · parts[r] for each row k], skipping zero coefficients; `parts` may be
    nested lists, mixed along their first index."""
    if isinstance(parts[0], list):
        columns = [_mix([p[j] for p in parts], matrix) for j in range(len(parts[0]))]
        return [[column[k] for column in columns] for k in range(len(matrix))]
    rows = []
    for row in matrix:
        terms = [p if c == 1 else -p if c == -1 else c * p for c, p in zip(row, parts) if c != 0]
        rows.append(sum(terms[1:], terms[0]))
    return rows


def winograd_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """conv(x, w), stride 1, padding 1, NHWC × HWIO -> NHWC, by Winograd F(2×2, 3×3).

    x: (B, H, W, C_in) with H and W even; w: (3, 3, C_in, C_out). The output's 2×2 tiles are
    computed from the 4×4 input tiles that overlap by 2: 16 products of (B·H·W/4, C_in) by
    (C_in, C_out) instead of 9 of (B·H·W, C_in) by (C_in, C_out).
    """
    b, h, wd, c_in = x.shape
    if h % 2 or wd % 2 or w.shape[:2] != (3, 3):
        raise ValueError(f"winograd_conv needs even H, W and a 3×3 kernel, got x {x.shape}, w {w.shape}")
    c_out = w.shape[-1]
    h2, w2 = h // 2, wd // 2
    blocks = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, h2 + 1, 2, w2 + 1, 2, c_in)
    # tile (i, j)'s row r, column c is padded pixel (2i + r, 2j + c): block (i + r//2, j + c//2)
    d = [[blocks[:, r // 2:r // 2 + h2, r % 2, c // 2:c // 2 + w2, c % 2] for c in range(4)]
         for r in range(4)]
    v = [_mix(row, B_T) for row in _mix(d, B_T)]  # v[k][l] = (Bᵀ d B)[k, l], each (B, H/2, W/2, C_in)
    v = jnp.stack([v[k][l] for k in range(4) for l in range(4)]).reshape(16, b * h2 * w2, c_in)
    u = jnp.einsum("ki,ijab,lj->klab", G.astype(w.dtype), w, G.astype(w.dtype)).reshape(16, c_in, c_out)
    m = jnp.einsum("kpc,kcd->kpd", v, u).reshape(4, 4, b, h2, w2, c_out)
    y = [_mix(row, A_T) for row in _mix([[m[k, l] for l in range(4)] for k in range(4)], A_T)]
    y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)  # (B, H/2, 2, W/2, 2, C_out)
    return y.reshape(b, h, wd, c_out)


def xla_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same convolution as `nn.Conv(padding=1)` computes it."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bf16_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """The convolution of x and w rounded to bfloat16, accumulated and returned in float32."""
    return jax.lax.conv_general_dilated(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (1, 1),
                                        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=jnp.float32)


VARIANTS = {"xla": xla_conv, "winograd": winograd_conv, "xla_bf16": bf16_conv}


def passes(conv, cotangent: jax.Array) -> dict:
    """{pass name: jitted function of (x, w)}."""
    def input_gradient(x, w):
        return jax.vjp(lambda x: conv(x, w), x)[1](cotangent)

    def weight_gradient(x, w):
        return jax.vjp(lambda w: conv(x, w), w)[1](cotangent)

    def gradient(x, w):
        return jax.vjp(conv, x, w)[1](cotangent)

    return {"forward": jax.jit(conv), "input_gradient": jax.jit(input_gradient),
            "weight_gradient": jax.jit(weight_gradient), "gradient": jax.jit(gradient)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in MODEL_SHAPES),
                        help="comma-separated HxWxC_INxC_OUT")
    args = parser.parse_args(argv)
    runtime.keep_freed_host_memory()  # as train.py does
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    print(f"3×3 convolutions, batch {args.batch}, float32, {jax.devices()[0].platform}; "
          f"medians of {args.iters} alternating calls, ms")
    for h, wd, c_in, c_out in shapes:
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(keys[0], (args.batch, h, wd, c_in), jnp.float32)
        w = jax.random.normal(keys[1], (3, 3, c_in, c_out), jnp.float32) / (9 * c_in) ** 0.5
        cotangent = jax.random.normal(keys[2], (args.batch, h, wd, c_out), jnp.float32)
        fns = {name: passes(conv, cotangent) for name, conv in VARIANTS.items()}
        reference = np.asarray(fns["xla"]["forward"](x, w))
        errors = ", ".join(
            f"{name} {np.max(np.abs(np.asarray(fns[name]['forward'](x, w)) - reference)) / np.max(np.abs(reference)):.1e}"
            for name in fns if name != "xla")
        print(f"(H, W, C_in, C_out) = ({h}, {wd}, {c_in}, {c_out}): max error of max |y|: {errors}")
        for pass_name in fns["xla"]:
            ms = _alternate({name: fns[name][pass_name] for name in fns}, (x, w), args.iters)
            print(f"  {pass_name:<16}" + "".join(
                f"  {name} {ms[name]:7.2f}" + ("" if name == "xla" else f" ({ms['xla'] / ms[name]:.2f}×)")
                for name in fns))
    # the matrix product of the first shape's convolution as patches (B·H·W, 9·C_in) × (9·C_in, C_out)
    h, wd, c_in, c_out = shapes[0]
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    patches = jax.random.normal(keys[0], (args.batch * h * wd, 9 * c_in), jnp.float32)
    weights = jax.random.normal(keys[1], (9 * c_in, c_out), jnp.float32)
    ms = _alternate({"float32": jax.jit(jnp.dot), "bfloat16": jax.jit(lambda a, b: jnp.dot(
        a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32))},
        (patches, weights), args.iters)
    print(f"matrix product {patches.shape} × {weights.shape}: float32 {ms['float32']:.2f}, "
          f"bfloat16 {ms['bfloat16']:.2f} ({ms['float32'] / ms['bfloat16']:.2f}×)")


def _alternate(fns: dict, args: tuple, iters: int) -> dict:
    """{name: median milliseconds} of each function, called in turn `iters` times after a warm-up."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


if __name__ == "__main__":
    main()
