"""benchmarks/conv_winograd.py: its Winograd F(2×2, 3×3) convolution is the 3×3 convolution, in
value and in every pass the benchmark times (float64 reference), and the script runs at its
smallest setting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import load_module

bench = load_module("benchmarks/conv_winograd.py")


@pytest.mark.slow  # runs the benchmark's timed passes
def test_winograd_is_the_convolution_in_every_timed_pass():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (2, 6, 4, 3), jnp.float64)
    w = jax.random.normal(keys[1], (3, 3, 3, 5), jnp.float64)
    cotangent = jax.random.normal(keys[2], (2, 6, 4, 5), jnp.float64)
    # the dense reference: every output pixel as a sum over its padded 3×3 window
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    dense = np.zeros((2, 6, 4, 5))
    for i in range(6):
        for j in range(4):
            dense[:, i, j] = np.einsum("bhwc,hwcd->bd", padded[:, i:i + 3, j:j + 3], np.asarray(w))
    np.testing.assert_allclose(bench.winograd_conv(x, w), dense, rtol=1e-12, atol=1e-12)
    xla = bench.passes(bench.xla_conv, cotangent)
    ours = bench.passes(bench.winograd_conv, cotangent)
    assert set(ours) == {"forward", "input_gradient", "weight_gradient", "gradient"}
    for name in ours:
        for a, b in zip(jax.tree.leaves(xla[name](x, w)), jax.tree.leaves(ours[name](x, w))):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=name)
    # the bfloat16 variant is the same convolution to bfloat16's precision
    y = bench.bf16_conv(x.astype(jnp.float32), w.astype(jnp.float32))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, dense, rtol=0, atol=0.02 * np.max(np.abs(dense)))


def test_winograd_refuses_odd_sizes():
    with pytest.raises(ValueError, match="even H, W"):
        bench.winograd_conv(jnp.zeros((1, 5, 4, 2)), jnp.zeros((3, 3, 2, 2)))


@pytest.mark.slow  # runs the benchmark
def test_the_benchmark_runs_at_its_smallest_setting(capsys):
    bench.main(["--iters", "1", "--batch", "1", "--shapes", "4x4x2x3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("(H, W, C_in, C_out) = (4, 4, 2, 3): max error of max |y|: winograd")
    assert [line.split()[0] for line in lines[2:6]] == ["forward", "input_gradient", "weight_gradient", "gradient"]
    assert all(" xla " in line and " winograd " in line and " xla_bf16 " in line for line in lines[2:6])
    assert lines[6].startswith("matrix product (16, 18) × (18, 3): float32")
