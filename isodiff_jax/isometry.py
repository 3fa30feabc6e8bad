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

Everything is computed from one linearization of `encode` at x (`jax.linearize`: one primal
pass, then JVPs and their transposes). The `*_linear` functions take that linearization from
the caller, so a training step can share the encoder's forward pass with its diffusion loss.

Variants: metric "sphere" (the paper's loss) or "euclidean" (G = I over all of R^n, no
projection); form "tangent" (default) or "chart" (stereographic, sphere only); estimator
"jvp_vjp" (Tr R² ≈ |R v|², one JVP + one VJP) or "jvp_jvp" (Tr R² ≈ (vᵀ R v')², two JVPs);
radius "point" (the sphere through x) or "sqrt_n" (x rescaled onto the sphere of radius √n).

Mixed precision: whatever dtype `encode` computes in (bfloat16 on accelerators), the probes, the
Jacobian-vector products' outputs and every trace, sum and ratio are at least float32.
"""
import dataclasses
import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from isodiff_jax import geometry

METRICS = ("sphere", "euclidean")
FORMS = ("tangent", "chart")
ESTIMATORS = ("jvp_vjp", "jvp_jvp")
RADII = ("point", "sqrt_n")


class _LinearProblem(NamedTuple):
    """The linear map whose R is estimated, on flat per-sample coordinates.

    lin: (B, d) -> (B, m), linear; y: (B, d) the point (ambient x or chart z); project: the
    projection of probes and cotangents (identity or P); inv_g: (B,) so that R = inv_g · linᵀ lin.
    """

    lin: Callable
    y: jax.Array
    project: Callable
    inv_g: jax.Array


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def _check_options(metric, form, estimator="jvp_vjp", radius="point"):
    _check_choice("metric", metric, METRICS)
    _check_choice("form", form, FORMS)
    _check_choice("estimator", estimator, ESTIMATORS)
    _check_choice("radius", radius, RADII)
    if metric == "euclidean" and form == "chart":
        raise ValueError("form='chart' needs metric='sphere': the euclidean metric has no chart")


def regularized_point(x, metric="sphere", radius="point"):
    """The point whose sphere is regularized: x itself, or x rescaled onto radius √n ("sqrt_n")."""
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {x.shape}")
    _check_choice("radius", radius, RADII)
    if metric != "sphere" or radius == "point":
        return x
    flat = x.reshape(x.shape[0], -1)
    return geometry.project_to_sphere(flat, math.sqrt(flat.shape[1])).reshape(x.shape)


def _at_least_f32(a: jax.Array) -> jax.Array:
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _linear_problem(jvp, x, metric, form) -> _LinearProblem:
    """Flattens jvp (tangents at x -> tangents of h) and, for the chart form, composes DΠ⁻¹.

    Works in ≥ float32: x is upcast, and so are the tangents of h (bfloat16 when the encoder
    computes in bfloat16), so the traces' squares and sums never round to bfloat16."""
    in_dtype, x = x.dtype, _at_least_f32(x)
    shape, batch = x.shape, x.shape[0]
    flat_x = x.reshape(batch, -1)
    ambient = lambda v: _at_least_f32(jvp(v.reshape((-1,) + shape[1:]).astype(in_dtype))).reshape(
        v.shape[0], -1)
    ones = jnp.ones((batch,), x.dtype)
    if metric == "euclidean":
        return _LinearProblem(ambient, flat_x, lambda v: v, ones)
    if form == "tangent":
        return _LinearProblem(ambient, flat_x, lambda v: geometry.tangent_projection(flat_x, v), ones)
    r = jnp.sqrt(geometry.squared_norm(flat_x))
    z = geometry.stereographic(flat_x, r)
    chart_to_ambient = lambda u: jax.jvp(lambda z_: geometry.inverse_stereographic(z_, r), (z,), (u,))[1]
    inv_g = 1.0 / geometry.stereographic_metric(z, r)
    return _LinearProblem(lambda u: ambient(chart_to_ambient(u)), z, lambda u: u, inv_g)


def trace_estimates_linear(jvp, x, key, *, metric="sphere", form="tangent", estimator="jvp_vjp",
                           num_probes=1):
    """Per-probe, per-sample Hutchinson estimates of Tr R and Tr R² from a linearization.

    Args: jvp maps tangents (B, ...) at x to tangents (B, ...) of h, sample by sample (e.g. the
    second output of `jax.linearize(encode, x)`); x (B, ...) the point; key a PRNG key.
    Returns: (tr_r, tr_r2), each (num_probes, B), unbiased for the exact traces.
    """
    _check_options(metric, form, estimator)
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    chex.assert_equal_shape_prefix([x, jax.eval_shape(jvp, x)], 1)  # h per sample of x
    prob = _linear_problem(jvp, x, metric, form)
    num_draws = 2 if estimator == "jvp_jvp" else 1
    xi = jax.random.normal(key, (num_draws, num_probes) + prob.y.shape, prob.y.dtype)
    jv = jax.vmap(jax.vmap(prob.lin))(prob.project(xi))  # (draws, K, B, m)
    sq = lambda a: jnp.sum(a * a, axis=-1)
    if estimator == "jvp_jvp":
        tr_r = 0.5 * (sq(jv[0]) + sq(jv[1])) * prob.inv_g
        tr_r2 = (jnp.sum(jv[0] * jv[1], axis=-1) * prob.inv_g) ** 2
        return tr_r, tr_r2
    lin_t = jax.linear_transpose(prob.lin, prob.y)
    jtjv = jax.vmap(lambda u: lin_t(u)[0])(jv[0])  # (K, B, d)
    return sq(jv[0]) * prob.inv_g, sq(prob.project(jtjv)) * prob.inv_g**2


def trace_estimates(encode, x, key, *, metric="sphere", form="tangent", estimator="jvp_vjp",
                    num_probes=1, radius="point"):
    """`trace_estimates_linear` of encode linearized at (the regularized point of) x."""
    _check_options(metric, form, estimator, radius)
    x = regularized_point(x, metric, radius)
    _, jvp = jax.linearize(encode, x)
    return trace_estimates_linear(jvp, x, key, metric=metric, form=form, estimator=estimator,
                                  num_probes=num_probes)


def isometry_loss_linear(jvp, x, key, *, metric="sphere", form="tangent", estimator="jvp_vjp",
                         num_probes=1):
    """L_iso = mean_b Tr R_b² / (mean_b Tr R_b)² from a linearization (see trace_estimates_linear).

    Returns: (loss, aux) with aux["tr_r"], aux["tr_r2"] the batch means and aux["rank_loss"]
    = rank · L_iso (1 at a perfect scaled isometry; rank = min(m, dim of the tangent space)).
    """
    tr_r, tr_r2 = trace_estimates_linear(jvp, x, key, metric=metric, form=form,
                                         estimator=estimator, num_probes=num_probes)
    mean_r, mean_r2 = jnp.mean(tr_r), jnp.mean(tr_r2)
    loss = mean_r2 / mean_r**2
    m = math.prod(jax.eval_shape(jvp, x).shape[1:])
    n = math.prod(x.shape[1:])
    rank = min(m, n - 1 if metric == "sphere" else n)
    return loss, {"tr_r": mean_r, "tr_r2": mean_r2, "rank_loss": rank * loss}


def isometry_loss(encode, x, key, *, metric="sphere", form="tangent", estimator="jvp_vjp",
                  num_probes=1, radius="point"):
    """The isometry loss of encode: (B, ...) -> (B, ...) on the sphere through x (B, ...).

    Returns: (loss, aux) as `isometry_loss_linear`.
    """
    _check_options(metric, form, estimator, radius)
    x = regularized_point(x, metric, radius)
    _, jvp = jax.linearize(encode, x)
    return isometry_loss_linear(jvp, x, key, metric=metric, form=form, estimator=estimator,
                                num_probes=num_probes)


def exact_isometry_traces(encode, x, *, metric="sphere", form="tangent", radius="point"):
    """Exact per-sample Tr R and Tr R² from dense Jacobians, for tests and small maps.

    Builds J column by column (d JVPs, all samples at once). Returns: (tr_r, tr_r2), each (B,).
    """
    _check_options(metric, form, radius=radius)
    x = regularized_point(x, metric, radius)
    _, jvp = jax.linearize(encode, x)
    prob = _linear_problem(jvp, x, metric, form)
    batch, d = prob.y.shape
    basis = jnp.broadcast_to(jnp.eye(d, dtype=prob.y.dtype)[:, None, :], (d, batch, d))
    jac = jnp.moveaxis(jax.vmap(prob.lin)(prob.project(basis)), 0, -1)  # (B, m, d): J P or J
    a = jac * jnp.sqrt(prob.inv_g)[:, None, None]
    gram = jnp.einsum("bmd,bkd->bmk", a, a)  # A Aᵀ has the non-zero spectrum of R
    return jnp.trace(gram, axis1=1, axis2=2), jnp.sum(gram * gram, axis=(1, 2))


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


REGULARIZERS = ("sphere", "euclidean", "path_length")


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """Which geometric regularizer, with what weight λ and estimator options (method.md §3).

    kind "sphere" (the paper's loss), "euclidean" (G = I) or "path_length" (StyleGAN2 baseline);
    the other fields are those of `isometry_loss` and `path_length_penalty`.
    """

    kind: str = "sphere"
    weight: float = 1e-3
    form: str = "tangent"
    estimator: str = "jvp_vjp"
    num_probes: int = 1
    radius: str = "point"
    pl_decay: float = 0.99

    def __post_init__(self):
        _check_choice("regularizer kind", self.kind, REGULARIZERS)
        if not self.weight >= 0:
            raise ValueError(f"regularizer weight must be >= 0, got {self.weight}")
        if self.kind != "path_length":
            _check_options(self.kind, self.form, self.estimator, self.radius)

    @property
    def linearizes_at_x_t(self) -> bool:
        """True when the loss needs only the encoder's linearization at x_t itself (shareable
        with the diffusion loss's forward pass)."""
        return self.kind != "path_length" and (self.kind == "euclidean" or self.radius == "point")

    def _isometry_options(self) -> dict:
        return dict(metric=self.kind, form=self.form, estimator=self.estimator, num_probes=self.num_probes)

    def __call__(self, encode: Callable, x_t: jax.Array, key: jax.Array,
                 pl_mean: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        """-> (loss, new_pl_mean, metrics) for encode: (B, ...) -> h at the batch's t."""
        if self.kind == "path_length":
            loss, pl_mean = path_length_penalty(encode, x_t, key, pl_mean, self.pl_decay)
            return loss, pl_mean, {"pl_mean": pl_mean}
        loss, aux = isometry_loss(encode, x_t, key, radius=self.radius, **self._isometry_options())
        return loss, pl_mean, aux

    def from_linearization(self, jvp: Callable, x_t: jax.Array, key: jax.Array,
                           pl_mean: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        """As __call__, from jvp = the encoder linearized at x_t (needs linearizes_at_x_t)."""
        if not self.linearizes_at_x_t:
            raise ValueError(f"{self} needs the encoder itself, not its linearization at x_t")
        loss, aux = isometry_loss_linear(jvp, x_t, key, **self._isometry_options())
        return loss, pl_mean, aux
