"""Geometry of the sphere of noisy inputs (method.md §2).

Points live on the last axis; every function broadcasts over leading axes, and `radius`
broadcasts against the leading axes (a scalar, or one radius per point of shape (...,) or (..., 1)).

The stereographic chart projects from the pole p = (0, ..., 0, r):

    z = Π(x) = r x[:n-1] / (r - x[n-1])                       x ∈ S^{n-1}(r) ⊂ R^n, z ∈ R^{n-1}
    Π⁻¹(z) = (2 r² z, r (|z|² - r²)) / (|z|² + r²)
    G(z) = g(z) I,  g(z) = 4 r⁴ / (|z|² + r²)²               (conformal pulled-back metric)

The radius always comes from the caller (the sphere through the actual point), never from z:
the original code computed it from the chart coordinates, which made G ≡ 1 (method.md §7.1).
"""
import jax.numpy as jnp


def _as_column(radius, like):
    """Radius as an array that broadcasts against points `like` (..., n)."""
    r = jnp.asarray(radius, dtype=like.dtype)
    if r.ndim == 0 or r.shape[-1:] == (1,) and r.ndim == like.ndim:
        return r
    return r[..., None]


def squared_norm(x):
    """|x|² over the last axis, keeping it: (..., n) -> (..., 1)."""
    return jnp.sum(x * x, axis=-1, keepdims=True)


def stereographic(x, radius):
    """Chart Π: points (..., n) on the sphere of `radius` -> coordinates (..., n-1)."""
    r = _as_column(radius, x)
    return r * x[..., :-1] / (r - x[..., -1:])


def inverse_stereographic(z, radius):
    """Π⁻¹: coordinates (..., n-1) -> points (..., n) on the sphere of `radius`."""
    r = _as_column(radius, z)
    zz = squared_norm(z)
    denom = zz + r * r
    return jnp.concatenate([2 * r * r * z, r * (zz - r * r)], axis=-1) / denom


def stereographic_metric(z, radius):
    """Conformal factor g(z) of the pulled-back metric G = g·I: (..., n-1) -> (...,)."""
    r = _as_column(radius, z)
    g = 4 * r**4 / (squared_norm(z) + r * r) ** 2
    return g[..., 0]


def tangent_projection(x, v):
    """P v with P = I - x xᵀ/|x|², the projection onto the sphere's tangent space at x."""
    return v - x * jnp.sum(x * v, axis=-1, keepdims=True) / squared_norm(x)


def project_to_sphere(x, radius):
    """Radial rescaling of x (..., n) onto the sphere of `radius`."""
    r = _as_column(radius, x)
    return x * r / jnp.sqrt(squared_norm(x))


def lerp(x0, x1, w):
    """Straight line (1 - w) x0 + w x1; w broadcasts against the leading axes."""
    w = _as_column(w, x0)
    return (1 - w) * x0 + w * x1


def slerp(x0, x1, w):
    """Spherical interpolation: sin((1-w)θ)/sin θ · x0 + sin(wθ)/sin θ · x1, θ = ∠(x0, x1).

    For |x0| = |x1| this is the constant-speed geodesic of that sphere (the usual choice for
    Gaussian latents). Falls back to lerp when x0 and x1 are parallel within float precision.
    """
    w = _as_column(w, x0)
    unit = lambda x: x / jnp.sqrt(squared_norm(x))
    cos = jnp.clip(jnp.sum(unit(x0) * unit(x1), axis=-1, keepdims=True), -1.0, 1.0)
    theta = jnp.arccos(cos)
    sin = jnp.sin(theta)
    tiny = sin < 1e-6
    safe_sin = jnp.where(tiny, 1.0, sin)
    a = jnp.where(tiny, 1 - w, jnp.sin((1 - w) * theta) / safe_sin)
    b = jnp.where(tiny, w, jnp.sin(w * theta) / safe_sin)
    return a * x0 + b * x1
