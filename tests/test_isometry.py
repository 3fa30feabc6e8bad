"""The isometry loss against dense float64 references (method.md §3)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax import isometry

SHAPE = (3, 2, 2, 4)  # B=3 samples of n=16
M = 6


def _mlp_params(key, n=16, m=M, width=24):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w1": jax.random.normal(k1, (n, width), jnp.float64) / np.sqrt(n),
            "b1": jax.random.normal(k2, (width,), jnp.float64) * 0.1,
            "w2": jax.random.normal(k3, (width, m), jnp.float64) / np.sqrt(width)}


def _encode(params, x):
    """A small random network, sample by sample: (B, 2, 2, 4) -> (B, 3, 2)."""
    y = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"]) @ params["w2"]
    return y.reshape(x.shape[0], 3, 2)


@pytest.fixture(scope="module")
def problem():
    params = _mlp_params(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), SHAPE, jnp.float64)
    return params, x


def _dense_r(params, x_b, metric):
    """R on the tangent space by brute force: P Jᵀ J P (sphere) or Jᵀ J (euclidean)."""
    flat = x_b.reshape(-1)
    jac = jax.jacfwd(lambda y: _encode(params, y.reshape((1,) + SHAPE[1:])).reshape(-1))(flat)
    gram = jac.T @ jac
    if metric == "sphere":
        proj = jnp.eye(flat.size) - jnp.outer(flat, flat) / (flat @ flat)
        gram = proj @ gram @ proj
    return gram


@pytest.mark.parametrize("metric", ["sphere", "euclidean"])
def test_exact_traces_match_brute_force(problem, metric):
    params, x = problem
    tr_r, tr_r2 = isometry.exact_isometry_traces(lambda x_: _encode(params, x_), x, metric=metric)
    for b in range(SHAPE[0]):
        r = _dense_r(params, x[b], metric)
        np.testing.assert_allclose(tr_r[b], jnp.trace(r), rtol=1e-12)
        np.testing.assert_allclose(tr_r2[b], jnp.trace(r @ r), rtol=1e-12)


@pytest.mark.parametrize("radius", ["point", "sqrt_n"])
def test_chart_and_tangent_forms_have_equal_exact_traces(problem, radius):
    params, x = problem
    enc = lambda x_: _encode(params, x_)
    tangent = isometry.exact_isometry_traces(enc, x, form="tangent", radius=radius)
    chart = isometry.exact_isometry_traces(enc, x, form="chart", radius=radius)
    np.testing.assert_allclose(chart[0], tangent[0], rtol=1e-12)
    np.testing.assert_allclose(chart[1], tangent[1], rtol=1e-12)


def test_chart_spectrum_equals_tangent_spectrum(problem):
    """Stronger than traces: the eigenvalues of R (chart) equal those of P JᵀJ P minus its normal zero."""
    params, x = problem
    from isodiff_jax import geometry
    flat = x[0].reshape(-1)
    r = jnp.linalg.norm(flat)
    z = geometry.stereographic(flat, r)
    f = lambda z_: _encode(params, geometry.inverse_stereographic(z_, r).reshape((1,) + SHAPE[1:]))
    jac = jax.jacfwd(lambda z_: f(z_).reshape(-1))(z)
    chart_eigs = np.sort(np.linalg.eigvalsh(jac.T @ jac / geometry.stereographic_metric(z, r)))
    tangent_eigs = np.sort(np.linalg.eigvalsh(_dense_r(params, x[0], "sphere")))
    np.testing.assert_allclose(chart_eigs, tangent_eigs[1:], atol=1e-12)  # drop the normal zero


@pytest.mark.parametrize("metric,form,estimator", [
    ("sphere", "tangent", "jvp_vjp"), ("sphere", "tangent", "jvp_jvp"),
    ("sphere", "chart", "jvp_vjp"), ("sphere", "chart", "jvp_jvp"),
    ("euclidean", "tangent", "jvp_vjp"), ("euclidean", "tangent", "jvp_jvp")])
def test_estimators_are_unbiased(problem, metric, form, estimator):
    params, x = problem
    enc = lambda x_: _encode(params, x_)
    exact = isometry.exact_isometry_traces(enc, x, metric=metric, form=form)
    probes = 4000
    est = isometry.trace_estimates(enc, x, jax.random.PRNGKey(2), metric=metric, form=form,
                                   estimator=estimator, num_probes=probes)
    for values, target in zip(est, exact):
        assert values.shape == (probes, SHAPE[0])
        mean = values.mean(axis=0)
        stderr = values.std(axis=0) / np.sqrt(probes)
        assert np.all(stderr < 0.1 * target), "too few probes for the test to have power"
        assert np.all(np.abs(mean - target) < 5 * stderr), (mean, target, stderr)


def test_loss_is_one_over_rank_at_a_scaled_isometry():
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 5), jnp.float64)
    for metric, form, rank in [("sphere", "tangent", 4), ("sphere", "chart", 4), ("euclidean", "tangent", 5)]:
        tr_r, tr_r2 = isometry.exact_isometry_traces(lambda x_: 2.5 * x_, x, metric=metric, form=form)
        np.testing.assert_allclose(rank * jnp.mean(tr_r2) / jnp.mean(tr_r) ** 2, 1.0, rtol=1e-12)
    # and the estimated loss of a non-isometric map is larger than 1/rank on average
    params = _mlp_params(jax.random.PRNGKey(4), n=5, m=5)
    enc = lambda x_: jnp.tanh(x_ @ params["w1"]) @ params["w2"][:, :5] * 3
    loss, aux = isometry.isometry_loss(enc, x, jax.random.PRNGKey(5), num_probes=2000)
    assert aux["rank_loss"] > 1.05
    np.testing.assert_allclose(aux["rank_loss"], 4 * loss)


VARIANTS = [dict(metric=m, form=f, estimator=e, radius=r)
            for m, f, e, r in itertools.product(["sphere", "euclidean"], ["tangent", "chart"],
                                                ["jvp_vjp", "jvp_jvp"], ["point", "sqrt_n"])
            if not (m == "euclidean" and f == "chart")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_every_variant_has_finite_nonzero_gradient(problem, variant):
    params, x = problem
    loss_fn = lambda p: isometry.isometry_loss(lambda x_: _encode(p, x_), x, jax.random.PRNGKey(6),
                                               num_probes=2, **variant)[0]
    grads = jax.grad(loss_fn)(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and all(n > 0 for n in norms), norms


@pytest.mark.parametrize("form", ["tangent", "chart"])
def test_gradient_matches_finite_differences(problem, form):
    """The gradient flows through the JVP and the transposed JVP correctly (fixed probes)."""
    params, x = problem
    loss_fn = lambda p: isometry.isometry_loss(lambda x_: _encode(p, x_), x, jax.random.PRNGKey(7),
                                               form=form, num_probes=3)[0]
    grads = jax.grad(loss_fn)(params)
    direction = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(8), a.shape, a.dtype), params)
    step = 1e-6
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)
    fd = (loss_fn(shifted(step)) - loss_fn(shifted(-step))) / (2 * step)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_path_length_penalty(problem):
    params, x = problem
    enc = lambda p: (lambda x_: _encode(p, x_))
    key = jax.random.PRNGKey(9)
    loss, new_mean = isometry.path_length_penalty(enc(params), x, key, jnp.float64(0.5), 0.9)
    # reference: |Jᵀ y| per sample from the dense Jacobian with the same y
    y = jax.random.normal(key, (SHAPE[0], 3, 2), jnp.float64)
    lengths = []
    for b in range(SHAPE[0]):
        jac = jax.jacfwd(lambda v: _encode(params, v.reshape((1,) + SHAPE[1:])).reshape(-1))(x[b].reshape(-1))
        lengths.append(jnp.linalg.norm(jac.T @ y[b].reshape(-1)))
    lengths = jnp.array(lengths)
    np.testing.assert_allclose(new_mean, 0.9 * 0.5 + 0.1 * lengths.mean(), rtol=1e-12)
    np.testing.assert_allclose(loss, jnp.mean((lengths - new_mean) ** 2), rtol=1e-12)
    grads = jax.grad(lambda p: isometry.path_length_penalty(enc(p), x, key, 0.5, 0.9)[0])(params)
    assert all(float(jnp.linalg.norm(g)) > 0 and jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("kwargs,match", [
    (dict(metric="hyperbolic"), "metric"), (dict(form="polar"), "form"),
    (dict(estimator="exact"), "estimator"), (dict(radius="unit"), "radius"),
    (dict(metric="euclidean", form="chart"), "chart"), (dict(num_probes=0), "num_probes")])
def test_bad_options_are_named(problem, kwargs, match):
    params, x = problem
    with pytest.raises(ValueError, match=match):
        isometry.isometry_loss(lambda x_: _encode(params, x_), x, jax.random.PRNGKey(0), **kwargs)
