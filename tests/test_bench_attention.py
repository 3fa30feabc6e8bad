"""benchmarks/attention.py: the previous attention it times against agrees with today's in every
pass the benchmark times (float32 tolerance), and the script runs at its smallest setting."""
import jax
import numpy as np
import pytest
from support import load_module

bench = load_module("benchmarks/attention.py")


@pytest.mark.slow  # runs the benchmark's timed passes
def test_previous_and_current_attention_agree_in_every_timed_pass():
    shape = (2, 16, 4, 8)
    q, k, v, c = (jax.random.normal(jax.random.PRNGKey(i), shape) * 2 for i in range(4))
    previous = bench.passes(bench.previous_attention, c)
    ours = bench.passes(bench.VARIANTS["ours"], c)
    assert set(previous) == {"forward", "gradient", "jvp", "second_order"}
    for name in previous:
        for a, b in zip(jax.tree.leaves(previous[name](q, k, v)), jax.tree.leaves(ours[name](q, k, v))):
            scale = float(np.max(np.abs(a)))
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


@pytest.mark.slow  # runs the benchmark
def test_the_benchmark_runs_at_its_smallest_setting(capsys):
    bench.main(["--iters", "1", "--batch", "1", "--positions", "4", "--heads", "2", "--head-dim", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("attention (B, L, heads, d) = (1, 4, 2, 2)")
    assert [line.split()[0] for line in lines[1:]] == ["forward", "gradient", "jvp", "second_order"]
    assert all("ours/previous" in line for line in lines[1:])
