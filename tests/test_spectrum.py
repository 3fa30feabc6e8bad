"""Jacobian spectra, MCN and VoR against dense float64 references (method.md §6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax.analysis.measures import spectrum

RTOL64 = spectrum.nonzero_rtol(48, 48, jnp.float64)


def _orthogonal(rng, size):
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def _matrix_with_spectrum(rng, m, n, s):
    """A = U diag(s) Vᵀ (m × n) with random orthogonal U, V; s has min(m, n) entries."""
    k = min(m, n)
    return _orthogonal(rng, m)[:, :k] @ np.diag(s) @ _orthogonal(rng, n)[:, :k].T


def _linear_fn(a):
    """x (B, ...) -> A x per sample, (B, m)."""
    a = jnp.asarray(a)
    return lambda x: x.reshape(x.shape[0], -1) @ a.T


def _mlp(key, n=48, width=32, m=12):
    """A tiny per-sample tanh MLP: (B, 4, 4, 3) -> (B, 2, 2, 3), n=48 -> m=12."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (n, width), jnp.float64) / np.sqrt(n)
    b1 = jax.random.normal(k2, (width,), jnp.float64) * 0.1
    w2 = jax.random.normal(k3, (width, m), jnp.float64) / np.sqrt(width)
    return lambda x: (jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2).reshape(-1, 2, 2, 3)


@pytest.fixture(scope="module")
def nonlinear():
    fn = _mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 3), jnp.float64)
    jac = jax.vmap(jax.jacfwd(lambda v: fn(v.reshape(1, 4, 4, 3)).reshape(-1)))(x.reshape(3, -1))
    return fn, x, np.linalg.svd(np.asarray(jac), compute_uv=False)


@pytest.mark.parametrize("m,n", [(5, 9), (7, 4)])  # rows (vjp) side and columns (jvp) side
def test_dense_linear_known_spectrum(m, n):
    rng = np.random.default_rng(0)
    s = np.sort(rng.uniform(0.5, 4.0, min(m, n)))[::-1]
    fn = _linear_fn(_matrix_with_spectrum(rng, m, n, s))
    x = jnp.asarray(rng.standard_normal((2, n)))
    got = spectrum.jacobian_singular_values(fn, x, chunk_size=3)
    np.testing.assert_allclose(got, np.stack([s, s]), rtol=0, atol=1e-10)
    np.testing.assert_allclose(spectrum.condition_numbers(got), s[0] / s[-1], rtol=1e-10)


def test_vor_of_maps_with_known_spectra():
    rng = np.random.default_rng(1)
    m, n, batch = 4, 6, 5
    spectra = -np.sort(-rng.uniform(0.1, 5.0, (batch, m)), axis=1)
    got = np.concatenate([
        spectrum.jacobian_singular_values(
            _linear_fn(_matrix_with_spectrum(rng, m, n, s)), jnp.ones((1, n)))
        for s in spectra])
    closed_form = np.sum(np.var(np.log(spectra), axis=0, ddof=1))  # the sample variance, as the original
    assert spectrum.vor(got) == pytest.approx(closed_form, rel=1e-10)
    assert spectrum.mcn(got) == pytest.approx(np.mean(spectra[:, 0] / spectra[:, -1]), rel=1e-10)


def test_dense_nonlinear_matches_jacfwd(nonlinear):
    fn, x, reference = nonlinear
    got = spectrum.jacobian_singular_values(fn, x, chunk_size=5)
    assert got.shape == (3, 12)
    np.testing.assert_allclose(got, reference, rtol=1e-12)


def test_matrix_free_matches_dense(nonlinear):
    fn, x, reference = nonlinear
    key = jax.random.key(2)
    full = spectrum.matrix_free_singular_values(fn, x, key, k=6, num_iters=12)
    np.testing.assert_allclose(full, reference, rtol=1e-8)  # q = m: the whole spectrum
    ends = spectrum.matrix_free_singular_values(fn, x, key, k=2, num_iters=12)
    assert ends.shape == (3, 4)
    np.testing.assert_allclose(ends, reference[:, [0, 1, -2, -1]], rtol=1e-2)
    # Extreme Ritz values converge first: the top one within 1 % after half of the iterations.
    top = spectrum.matrix_free_singular_values(fn, x, key, k=1, which="top", num_iters=6)
    np.testing.assert_allclose(top[:, 0], reference[:, 0], rtol=1e-2)


def test_matrix_free_batch_of_maps_tall_jacobian():
    """Per-sample maps (a batched einsum, block-diagonal batch Jacobian) with m > n."""
    rng = np.random.default_rng(3)
    m, n = 9, 5
    spectra = -np.sort(-rng.uniform(0.2, 3.0, (2, n)), axis=1)
    a = jnp.asarray(np.stack([_matrix_with_spectrum(rng, m, n, s) for s in spectra]))
    fn = lambda x: jnp.einsum("bmn,bn->bm", a, x)
    got = spectrum.matrix_free_singular_values(fn, jnp.ones((2, n)), jax.random.key(0), k=n)
    np.testing.assert_allclose(got, spectra, rtol=1e-10)


def test_zero_singular_values_count_and_the_rank_is_only_a_diagnostic():
    rng = np.random.default_rng(4)
    s = np.array([3.0, 2.0, 1.0, 0.0, 0.0])
    fn = _linear_fn(_matrix_with_spectrum(rng, 5, 8, s))
    x = jnp.asarray(rng.standard_normal((2, 8)))
    dense = spectrum.jacobian_singular_values(fn, x)
    free = spectrum.matrix_free_singular_values(fn, x, jax.random.key(0), k=5)
    for got in (dense, free):
        np.testing.assert_allclose(got, np.stack([s, s]), atol=1e-10)
        np.testing.assert_array_equal(spectrum.ranks(got, rtol=RTOL64), [3, 3])
        assert np.all(spectrum.condition_numbers(got) > 1e9)  # s_min is (numerically) zero
    exact = np.stack([s, s])
    assert np.all(np.isinf(spectrum.condition_numbers(exact))) and np.isnan(spectrum.vor(exact))
    assert np.isnan(spectrum.condition_numbers(np.zeros((1, 3)))[0])


def test_spectrum_metrics_yields_named_values(nonlinear):
    fn, x, reference = nonlinear
    for method in spectrum.METHODS:
        measured = spectrum.spectrum_metrics(fn, x, method=method, key=jax.random.key(0), prefix="t500/", k=6)
        got = measured.values
        names = {"mcn", "vor", "s_max", "s_min", "rank"}
        names |= {"mcn_is_lower_bound", "s_min_change"} if method == "matrix_free" else set()
        assert set(got) == {f"t500/{name}" for name in names}
        assert set(spectrum.value_names(method, spectrum.whole_spectrum(method, *spectrum.map_dims(fn, x), k=6),
                                        "t500/")) == set(got)
        np.testing.assert_allclose(measured.pictures["t500/singular_values"], reference, rtol=1e-6)
        assert got["t500/mcn"] == pytest.approx(spectrum.mcn(reference), rel=1e-8)
        assert got["t500/vor"] == pytest.approx(spectrum.vor(reference), rel=1e-6)
        assert got["t500/rank"] == 12
        assert got["t500/s_min"] == pytest.approx(reference[:, -1].mean(), rel=1e-8)


def test_average_pool():
    h = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float64).reshape(2, 4, 6, 3)
    pooled = spectrum.average_pool(h, 2)
    assert pooled.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(pooled[1, 1, 2], np.asarray(h[1, 2:4, 4:6]).mean(axis=(0, 1)))
    assert spectrum.average_pool(h, 1) is h
    for bad_h, factor in [(h, 3), (h, 0), (h, 2.0), (h[0], 2)]:
        with pytest.raises(ValueError):
            spectrum.average_pool(bad_h, factor)


def test_bad_inputs_raise(nonlinear):
    fn, x, _ = nonlinear
    key = jax.random.key(0)
    bad_calls = [
        lambda: spectrum.matrix_free_singular_values(fn, x, key, k=13),  # k > min(m, n) = 12
        lambda: spectrum.matrix_free_singular_values(fn, x, key, k=0),
        lambda: spectrum.matrix_free_singular_values(fn, x, key, k=4, num_iters=3),
        lambda: spectrum.matrix_free_singular_values(fn, x, key, k=2, which=("middle",)),
        lambda: spectrum.jacobian_singular_values(fn, x, chunk_size=0),
        lambda: spectrum.jacobian_singular_values(lambda v: v.sum(), x),  # no batch axis out
        lambda: spectrum.jacobian_singular_values(fn, x.reshape(-1)),  # no batch axis in
        lambda: spectrum.spectrum_metrics(fn, x, method="lanczos"),
        lambda: list(spectrum.spectrum_metrics(fn, x, method="matrix_free")),  # no key
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


def test_sample_jacobian_fn_matches_jacfwd_with_a_ragged_last_chunk(nonlinear):
    fn, x, _ = nonlinear
    reference = jax.jacfwd(lambda v: fn(v.reshape(1, 4, 4, 3)).reshape(-1))(x[1].reshape(-1))
    jacobian = spectrum.sample_jacobian_fn(lambda _, v: fn(v), x, chunk_size=5)  # 12 rows: chunks 5, 5, 2
    np.testing.assert_allclose(jacobian(None, x[1:2]), reference, rtol=1e-12, atol=1e-14)


def test_bidiagonalize_fn_leading_blocks_are_shorter_runs(nonlinear):
    """The Ritz values after j steps, from the leading j × j block of one q-step run."""
    fn, x, reference = nonlinear
    key = jax.random.key(3)
    with_params = lambda _, v: fn(v)
    alpha, beta = spectrum.bidiagonalize_fn(with_params, x, num_iters=12)(None, x, key)
    np.testing.assert_allclose(spectrum.bidiagonal_singular_values(alpha, beta), reference, rtol=1e-8)
    short = spectrum.bidiagonal_singular_values(*spectrum.bidiagonalize_fn(with_params, x, num_iters=5)(None, x, key))
    leading = spectrum.bidiagonal_singular_values(alpha[:, :5], beta[:, :5])
    np.testing.assert_allclose(leading, short, rtol=1e-10)
    assert np.all(leading[:, -1] >= reference[:, -1] * (1 - 1e-10))  # s_min approached from above


def _diagonal(d):
    """A per-sample diagonal map x -> d ⊙ x on images (B, H, W, C): singular values |d|."""
    return lambda x: x * d.reshape(x.shape[1:])


def test_matrix_free_mcn_at_256x256_float32_is_not_capped():
    """A float32 diagonal Jacobian on 256×256×3 inputs with true CN 100. A numerical-rank cut at
    max(m, n)·eps(float32) = 0.023 would drop s = 0.01 and report 10 (or 2 with nearer values)."""
    n = 256 * 256 * 3
    d = np.ones(n, np.float32)
    d[: n // 3], d[n // 3: 2 * n // 3] = 0.1, 0.01  # three distinct values: Krylov resolves them exactly
    x = jnp.ones((1, 256, 256, 3), jnp.float32)
    got = spectrum.spectrum_metrics(_diagonal(jnp.asarray(d)), x, method="matrix_free", key=jax.random.key(0),
                                    k=2, num_iters=8).values
    assert got["mcn"] == pytest.approx(100.0, rel=1e-4)
    assert got["s_min"] == pytest.approx(0.01, rel=1e-4) and got["mcn_is_lower_bound"] == 1.0
    assert spectrum.nonzero_rtol(n, n, jnp.float32) > 0.01  # what the old cut would have dropped


def test_dense_mcn_in_float32_counts_values_below_the_numerical_rank_threshold():
    m, n = 300, 3072
    d = jnp.asarray(np.geomspace(1.0, 1e-4, m), jnp.float32)  # true CN 1e4
    fn = lambda x: x.reshape(len(x), -1)[:, :m] * d
    x = jnp.ones((2, n), jnp.float32)
    got = spectrum.spectrum_metrics(fn, x, method="dense").values
    assert got["mcn"] == pytest.approx(1e4, rel=1e-3)
    assert 1e-4 < spectrum.nonzero_rtol(m, n, jnp.float32) and got["rank"] < m  # the diagnostic sees the cut


def test_matrix_free_reports_when_s_min_has_not_converged():
    """A geometric spectrum with true CN 1000 on 256 values: 32 Lanczos iterations report a much
    smaller MCN, flagged as a bound with s_min still moving; all 256 give it exactly."""
    d = jnp.asarray(np.geomspace(1.0, 1e-3, 256))
    x = jnp.ones((2, 256), jnp.float64)
    key = jax.random.key(1)
    short = spectrum.spectrum_metrics(lambda v: v * d, x, method="matrix_free", key=key, k=4, num_iters=32).values
    assert short["mcn"] < 500 and short["mcn_is_lower_bound"] == 1.0 and short["s_min_change"] > 0.05
    full = spectrum.spectrum_metrics(lambda v: v * d, x, method="matrix_free", key=key, k=4, num_iters=256).values
    assert full["mcn"] == pytest.approx(1000.0, rel=1e-6) and full["mcn_is_lower_bound"] == 0.0
    assert full["s_min_change"] == 0.0  # exact after min(m, n) iterations, however late s_min settled
