"""Geometry of the sphere of noisy inputs (method.md §2).

Points are batches (B, ...): each sample is one flattened vector of n = prod(shape[1:]) numbers
(an image (H, W, C) is one point of R^{HWC}, never H·W points of R^C), and every function returns
the shape it was given. A 1-D array (n,) is a single point, which is what `jax.jacfwd` or
`jax.vmap` over samples hand a function. `radius` and `w` are a scalar or one value per sample,
(B,); (B, 1), as callers with (B, n) points pass it, is accepted too. Per-sample values broadcast
against the batch axis, so x0 of shape (1, n) and w of shape (K,) give K points.

The stereographic chart projects from the pole p = (0, ..., 0, r), the pole's nonzero coordinate
being the last of the flattened sample:

    z = Π(x) = r x[:n-1] / (r - x[n-1])                       x ∈ S^{n-1}(r) ⊂ R^n, z ∈ R^{n-1}
    Π⁻¹(z) = (2 r² z, r (|z|² - r²)) / (|z|² + r²)
    G(z) = g(z) I,  g(z) = 4 r⁴ / (|z|² + r²)²               (conformal pulled-back metric)

so chart coordinates are always flat: Π takes (B, ...) to (B, n-1), Π⁻¹ takes (B, n-1) to (B, n).

The radius always comes from the caller (the sphere through the actual point), never from z:
the original code computed it from the chart coordinates, which made G ≡ 1 (method.md §7.1).
"""
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _sample_axes(x: jax.Array) -> tuple[int, ...]:
    """The axes of one sample of x, counted from the end: all but the batch axis, or the only axis
    of a single point (n,). Counting from the end lets a second operand carry extra leading axes."""
    if x.ndim == 0:
        raise ValueError("expected points of shape (B, ...) or (n,), got a scalar")
    return tuple(range(1 - x.ndim, 0)) if x.ndim > 1 else (-1,)


def _inner(x: jax.Array, v: jax.Array) -> jax.Array:
    """Per-sample ⟨x, v⟩ over the sample axes of x, kept as size-1 axes for broadcasting."""
    return jnp.sum(x * v, axis=_sample_axes(x), keepdims=True)


def _flatten(x: jax.Array) -> jax.Array:
    """(B, ...) -> (B, n); a single point (n,) unchanged."""
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x


def _per_sample(value: ArrayLike, points: jax.Array) -> jax.Array:
    """A scalar or one value per sample ((B,) or (B, 1)) as an array that broadcasts against
    points (B, ...): shape (B, 1, ..., 1)."""
    v = jnp.asarray(value, dtype=points.dtype)
    if v.ndim == 0 or points.ndim == 1:
        return v
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"expected a scalar or one value per sample, (B,) or (B, 1), got shape {v.shape}"
                         f" for points of shape {points.shape}")
    return v.reshape(v.shape + (1,) * (points.ndim - 1))


def squared_norm(x: jax.Array) -> jax.Array:
    """|x|² per sample: (B, ...) -> (B,); a single point (n,) -> ()."""
    return jnp.sum(x * x, axis=_sample_axes(x))


def stereographic(x: jax.Array, radius: ArrayLike) -> jax.Array:
    """Chart Π: points (B, ...) on the sphere of `radius` -> coordinates (B, n-1)."""
    x = _flatten(x)
    r = _per_sample(radius, x)
    return r * x[..., :-1] / (r - x[..., -1:])


def inverse_stereographic(z: jax.Array, radius: ArrayLike) -> jax.Array:
    """Π⁻¹: coordinates (B, n-1) -> points (B, n) on the sphere of `radius`."""
    z = _flatten(z)
    r = _per_sample(radius, z)
    zz = _inner(z, z)
    denom = zz + r * r
    return jnp.concatenate([2 * r * r * z, r * (zz - r * r)], axis=-1) / denom


def stereographic_metric(z: jax.Array, radius: ArrayLike) -> jax.Array:
    """Conformal factor g(z) of the pulled-back metric G = g·I: coordinates (B, n-1) -> (B,)."""
    z = _flatten(z)
    r = _per_sample(radius, z)
    g = 4 * r**4 / (_inner(z, z) + r * r) ** 2
    return g[..., 0]


def tangent_projection(x: jax.Array, v: jax.Array) -> jax.Array:
    """P v with P = I - x xᵀ/|x|², the projection onto the sphere's tangent space at x (B, ...).

    v has x's shape, or extra leading axes (e.g. several probes (K, B, ...)), which broadcast.
    """
    return v - x * _inner(x, v) / _inner(x, x)


def project_to_sphere(x: jax.Array, radius: ArrayLike) -> jax.Array:
    """Radial rescaling of each sample of x (B, ...) onto the sphere of `radius`."""
    r = _per_sample(radius, x)
    return x * r / jnp.sqrt(_inner(x, x))


def lerp(x0: jax.Array, x1: jax.Array, w: ArrayLike) -> jax.Array:
    """Straight line (1 - w) x0 + w x1 between points (B, ...); w a scalar or one per sample."""
    w = _per_sample(w, x0)
    return (1 - w) * x0 + w * x1


def slerp(x0: jax.Array, x1: jax.Array, w: ArrayLike) -> jax.Array:
    """Spherical interpolation: sin((1-w)θ)/sin θ · x0 + sin(wθ)/sin θ · x1, θ = ∠(x0, x1), the
    angle between whole samples (B, ...); w a scalar or one per sample.

    For |x0| = |x1| this is the constant-speed geodesic of that sphere (the usual choice for
    Gaussian latents). Falls back to lerp when x0 and x1 are parallel within float precision.
    """
    w = _per_sample(w, x0)
    unit = lambda x: x / jnp.sqrt(_inner(x, x))
    cos = jnp.clip(_inner(unit(x0), unit(x1)), -1.0, 1.0)
    theta = jnp.arccos(cos)
    sin = jnp.sin(theta)
    tiny = sin < 1e-6
    safe_sin = jnp.where(tiny, 1.0, sin)
    a = jnp.where(tiny, 1 - w, jnp.sin((1 - w) * theta) / safe_sin)
    b = jnp.where(tiny, w, jnp.sin(w * theta) / safe_sin)
    return a * x0 + b * x1
