"""The isometry loss and its trace estimators (method.md §3).

`encode` is any function mapping a batch x of shape (B, ...) to h of shape (B, ...) sample by
sample (for the U-Net: its down path + middle block at a fixed t). For sample b let Jₑ be the
ambient Jacobian ∂h/∂x (m × n) at x_b and P = I − x xᵀ/|x|² the tangent projection. The map
is a scaled isometry of the sphere iff the spectrum of

    R = G^{-1/2} Jᵀ J G^{-1/2}   (chart form, J = ∂(e ∘ Π⁻¹)/∂z, G = g·I)
      ≅ P Jₑᵀ Jₑ P               (tangent form, same spectrum without the normal zero)

is constant, and the loss  L = mean_b Tr R_b² / (mean_b Tr R_b)²  is minimal (1/rank) exactly
then. Traces are estimated with Gaussian probes (Hutchinson); gradients with respect to whatever
`encode` closes over flow through every estimate (the probes are constants).

Variants: metric "sphere" (the paper's loss) or "euclidean" (G = I over all of R^n, no
projection); form "tangent" (default) or "chart" (stereographic, sphere only); estimator
"jvp_vjp" (Tr R² ≈ |R v|², one JVP + one VJP) or "jvp_jvp" (Tr R² ≈ (vᵀ R v')², two JVPs);
radius "point" (the sphere through x) or "sqrt_n" (x rescaled onto the sphere of radius √n).
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from isodiff_jax import geometry

METRICS = ("sphere", "euclidean")
FORMS = ("tangent", "chart")
ESTIMATORS = ("jvp_vjp", "jvp_jvp")
RADII = ("point", "sqrt_n")


class _FlatProblem(NamedTuple):
    """The map whose traces are estimated, on flat per-sample coordinates.

    f: (B, d) -> (B, m); y: (B, d) the point; project: probe/cotangent projection (identity
    or P); inv_g: (B, 1) factor 1/g so that R = inv_g · Jᵀ J (1 in the tangent form).
    """

    f: Callable
    y: jax.Array
    project: Callable
    inv_g: jax.Array


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def _check_options(metric, form, estimator, radius):
    _check_choice("metric", metric, METRICS)
    _check_choice("form", form, FORMS)
    _check_choice("estimator", estimator, ESTIMATORS)
    _check_choice("radius", radius, RADII)
    if metric == "euclidean" and form == "chart":
        raise ValueError("form='chart' needs metric='sphere': the euclidean metric has no chart")


def _flat_problem(encode, x, metric, form, radius) -> _FlatProblem:
    """Rewrites encode at x as a map on flat coordinates (tangent/ambient or chart)."""
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {x.shape}")
    shape = x.shape
    flat_x = x.reshape(shape[0], -1)
    n = flat_x.shape[1]
    r = jnp.sqrt(geometry.squared_norm(flat_x))
    if metric == "sphere" and radius == "sqrt_n":
        r = jnp.full_like(r, math.sqrt(n))
        flat_x = geometry.project_to_sphere(flat_x, r)

    def ambient(y):
        return encode(y.reshape((-1,) + shape[1:])).reshape(y.shape[0], -1)

    ones = jnp.ones_like(r)
    if metric == "euclidean":
        return _FlatProblem(ambient, flat_x, lambda v: v, ones)
    if form == "tangent":
        return _FlatProblem(ambient, flat_x, lambda v: geometry.tangent_projection(flat_x, v), ones)
    z = geometry.stereographic(flat_x, r)
    inv_g = 1.0 / geometry.stereographic_metric(z, r)[:, None]
    chart = lambda z_: ambient(geometry.inverse_stereographic(z_, r))
    return _FlatProblem(chart, z, lambda v: v, inv_g)


def trace_estimates(encode, x, key, *, metric="sphere", form="tangent", estimator="jvp_vjp",
                    num_probes=1, radius="point"):
    """Per-probe, per-sample Hutchinson estimates of Tr R and Tr R².

    Args: encode (B, ...) -> (B, ...); x (B, ...); key a PRNG key.
    Returns: (tr_r, tr_r2), each (num_probes, B), unbiased for the exact traces.
    """
    _check_options(metric, form, estimator, radius)
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    prob = _flat_problem(encode, x, metric, form, radius)
    num_draws = 2 if estimator == "jvp_jvp" else 1
    xi = jax.random.normal(key, (num_draws, num_probes) + prob.y.shape, prob.y.dtype)
    v = prob.project(xi)
    _, f_jvp = jax.linearize(prob.f, prob.y)
    jv = jax.vmap(jax.vmap(f_jvp))(v)  # (draws, K, B, m)
    sq = lambda a: jnp.sum(a * a, axis=-1)
    if estimator == "jvp_jvp":
        tr_r = 0.5 * (sq(jv[0]) + sq(jv[1])) * prob.inv_g[:, 0]
        tr_r2 = (jnp.sum(jv[0] * jv[1], axis=-1) * prob.inv_g[:, 0]) ** 2
        return tr_r, tr_r2
    f_vjp = jax.linear_transpose(f_jvp, prob.y)
    jtjv = jax.vmap(lambda u: f_vjp(u)[0])(jv[0])  # (K, B, d)
    tr_r = sq(jv[0]) * prob.inv_g[:, 0]
    tr_r2 = sq(prob.project(jtjv)) * prob.inv_g[:, 0] ** 2
    return tr_r, tr_r2


def isometry_loss(encode, x, key, *, metric="sphere", form="tangent", estimator="jvp_vjp",
                  num_probes=1, radius="point"):
    """L_iso = mean_b Tr R_b² / (mean_b Tr R_b)², a ratio of batch means.

    Args: see `trace_estimates`.
    Returns: (loss, aux) with aux["tr_r"], aux["tr_r2"] the batch means and aux["rank_loss"]
    = rank · L_iso (1 at a perfect scaled isometry; rank = min(m, dim of the tangent space)).
    """
    tr_r, tr_r2 = trace_estimates(encode, x, key, metric=metric, form=form, estimator=estimator,
                                  num_probes=num_probes, radius=radius)
    mean_r, mean_r2 = jnp.mean(tr_r), jnp.mean(tr_r2)
    loss = mean_r2 / mean_r**2
    m = math.prod(jax.eval_shape(encode, x).shape[1:])
    n = math.prod(x.shape[1:])
    rank = min(m, n - 1 if metric == "sphere" else n)
    return loss, {"tr_r": mean_r, "tr_r2": mean_r2, "rank_loss": rank * loss}


def exact_isometry_traces(encode, x, *, metric="sphere", form="tangent", radius="point"):
    """Exact per-sample Tr R and Tr R² from a dense Jacobian (jax.jacfwd), for tests and small maps.

    Returns: (tr_r, tr_r2), each (B,). Costs n JVPs per sample.
    """
    _check_options(metric, form, "jvp_vjp", radius)

    def jacobian(x_b):  # (m, d) for one sample, R = inv_g · JᵀJ on its (tangent) coordinates
        prob = _flat_problem(encode, x_b[None], metric, form, radius)
        jac = jax.jacfwd(prob.f)(prob.y)[0, :, 0, :]
        if metric == "sphere" and form == "tangent":
            jac = geometry.tangent_projection(prob.y, jac)  # rows of J P
        return jac * jnp.sqrt(prob.inv_g[0, 0])

    a = jax.vmap(jacobian)(x)  # (B, m, d)
    gram = jnp.einsum("bmd,bkd->bmk", a, a)  # A Aᵀ has the non-zero spectrum of R
    tr_r = jnp.trace(gram, axis1=1, axis2=2)
    tr_r2 = jnp.sum(gram * gram, axis=(1, 2))
    return tr_r, tr_r2


def path_length_penalty(encode, x, key, pl_mean, decay):
    """StyleGAN2-style path-length penalty (|Jₑᵀ y| − a)², y ~ N(0, I_m) (method.md §3).

    Args: pl_mean the running mean a (scalar, kept in the training state); decay in [0, 1):
    a ← decay · a + (1 − decay) · mean_b |Jₑᵀ y| (no gradient through a).
    Returns: (loss, new_pl_mean).
    """
    h, f_vjp = jax.vjp(encode, x)
    y = jax.random.normal(key, h.shape, h.dtype)
    (jty,) = f_vjp(y)
    lengths = jnp.sqrt(jnp.sum(jty.reshape(x.shape[0], -1) ** 2, axis=-1))
    new_mean = decay * pl_mean + (1 - decay) * jnp.mean(jax.lax.stop_gradient(lengths))
    return jnp.mean((lengths - new_mean) ** 2), new_mean
