"""Sphere geometry against closed forms and dense float64 Jacobians (method.md §2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax import geometry

N = 7


def _points(key, batch=5, n=N):
    return jax.random.normal(key, (batch, n), jnp.float64) * 3.0


@pytest.mark.parametrize("radius", [1.0, 3.0, np.sqrt(N)])
def test_pullback_metric_of_inverse_chart_is_conformal(radius):
    z = jax.random.normal(jax.random.PRNGKey(0), (4, N - 1), jnp.float64) * radius
    for z_b in z:
        jac = jax.jacfwd(geometry.inverse_stereographic)(z_b, radius)  # (N, N-1)
        g = geometry.stereographic_metric(z_b, radius)
        np.testing.assert_allclose(jac.T @ jac, g * np.eye(N - 1), atol=1e-12 * max(1.0, g))


def test_chart_round_trips_with_per_point_radius():
    x = _points(jax.random.PRNGKey(1))
    r = jnp.linalg.norm(x, axis=-1)
    z = geometry.stereographic(x, r)
    assert z.shape == (5, N - 1)
    np.testing.assert_allclose(geometry.inverse_stereographic(z, r), x, rtol=1e-12, atol=1e-12)
    back = geometry.inverse_stereographic(z, r[:, None])
    np.testing.assert_allclose(jnp.linalg.norm(back, axis=-1), r, rtol=1e-13)
    np.testing.assert_allclose(geometry.stereographic(back, r), z, rtol=1e-11, atol=1e-11)


def test_metric_closed_form_and_broadcasting():
    z = jnp.array([[0.0, 0.0], [1.0, 2.0]], jnp.float64)
    r = jnp.array([2.0, 0.5])
    g = geometry.stereographic_metric(z, r)
    np.testing.assert_allclose(g, 4 * r**4 / (jnp.sum(z**2, -1) + r**2) ** 2)
    assert g.shape == (2,)
    np.testing.assert_allclose(g[0], 4.0)  # at the chart's origin g = 4


def test_tangent_projection_is_orthogonal_projector():
    x, v = _points(jax.random.PRNGKey(2)), _points(jax.random.PRNGKey(3))
    pv = geometry.tangent_projection(x, v)
    np.testing.assert_allclose(jnp.sum(pv * x, -1), 0.0, atol=1e-12)
    np.testing.assert_allclose(geometry.tangent_projection(x, pv), pv, atol=1e-12)
    np.testing.assert_allclose(geometry.tangent_projection(x, x), 0.0, atol=1e-12)


def test_project_to_sphere():
    x = _points(jax.random.PRNGKey(4))
    y = geometry.project_to_sphere(x, np.sqrt(N))
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), np.sqrt(N))
    np.testing.assert_allclose(y / jnp.linalg.norm(y, axis=-1, keepdims=True),
                               x / jnp.linalg.norm(x, axis=-1, keepdims=True), atol=1e-14)


def test_slerp_is_constant_speed_geodesic():
    x0, x1 = _points(jax.random.PRNGKey(5)), _points(jax.random.PRNGKey(6))
    x1 = x1 * (jnp.linalg.norm(x0, axis=-1) / jnp.linalg.norm(x1, axis=-1))[:, None]
    np.testing.assert_allclose(geometry.slerp(x0, x1, 0.0), x0, atol=1e-12)
    np.testing.assert_allclose(geometry.slerp(x0, x1, 1.0), x1, atol=1e-12)
    ws = jnp.linspace(0, 1, 11)
    path = jnp.stack([geometry.slerp(x0, x1, w) for w in ws])  # (11, B, N)
    np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1),
                               jnp.broadcast_to(jnp.linalg.norm(x0, axis=-1), (11, 5)), rtol=1e-12)
    unit = path / jnp.linalg.norm(path, axis=-1, keepdims=True)
    step_angles = jnp.arccos(jnp.clip(jnp.sum(unit[1:] * unit[:-1], -1), -1, 1))
    np.testing.assert_allclose(step_angles, jnp.broadcast_to(step_angles[0], step_angles.shape),
                               rtol=1e-6)
    per_sample_w = geometry.slerp(x0, x1, ws[:5])  # one w per sample broadcasts
    np.testing.assert_allclose(per_sample_w[2], path[2, 2], atol=1e-12)


def test_slerp_parallel_falls_back_to_lerp_and_lerp_endpoints():
    x0 = _points(jax.random.PRNGKey(7))
    np.testing.assert_allclose(geometry.slerp(x0, 2 * x0, 0.5), 1.5 * x0, rtol=1e-6)
    x1 = _points(jax.random.PRNGKey(8))
    np.testing.assert_allclose(geometry.lerp(x0, x1, 0.25), 0.75 * x0 + 0.25 * x1)
    assert jnp.all(jnp.isfinite(jax.grad(lambda w: geometry.slerp(x0, 2 * x0, w).sum())(0.3)))


IMAGE = (4, 3, 5, 2)  # (B, H, W, C): one point of R^30 per sample


def _images(key, shape=IMAGE):
    return jax.random.normal(key, shape, jnp.float64) * 2.0


def _flat(x):
    return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize("w", [0.3, jnp.array([0.0, 0.25, 0.6, 1.0]), jnp.array([[0.1], [0.2], [0.3], [0.9]])])
def test_image_shaped_points_act_as_their_flattened_samples(w):
    """Scalar, (B,) and (B, 1) weights; radius likewise; results reshape to the flattened ones."""
    x0, x1 = _images(jax.random.PRNGKey(9)), _images(jax.random.PRNGKey(10))
    for f in (geometry.slerp, geometry.lerp):
        out = f(x0, x1, w)
        assert out.shape == IMAGE
        np.testing.assert_allclose(_flat(out), f(_flat(x0), _flat(x1), w), rtol=1e-13, atol=1e-13)
    radius = 1.0 + jnp.reshape(jnp.asarray(w), (-1,)) if jnp.ndim(w) else 2.5
    out = geometry.project_to_sphere(x0, radius)
    assert out.shape == IMAGE
    np.testing.assert_allclose(_flat(out), geometry.project_to_sphere(_flat(x0), radius), rtol=1e-13)
    np.testing.assert_allclose(jnp.linalg.norm(_flat(out), axis=1), jnp.broadcast_to(radius, (4,)), rtol=1e-13)
    pv = geometry.tangent_projection(x0, x1)
    assert pv.shape == IMAGE
    np.testing.assert_allclose(_flat(pv), geometry.tangent_projection(_flat(x0), _flat(x1)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(_flat(pv) * _flat(x0), axis=1), 0.0, atol=1e-12)


def test_slerp_of_images_stays_on_each_samples_sphere_and_matches_midpoint():
    x0, x1 = _images(jax.random.PRNGKey(11)), _images(jax.random.PRNGKey(12))
    r = jnp.linalg.norm(_flat(x0), axis=1)
    x1 = geometry.project_to_sphere(x1, r)  # same radius per sample, a different one per sample
    for w in jnp.linspace(0, 1, 7):
        np.testing.assert_allclose(jnp.linalg.norm(_flat(geometry.slerp(x0, x1, w)), axis=1), r, rtol=1e-12)
    # Midpoint of the great-circle arc: (x0 + x1) rescaled onto the sphere of radius r.
    mid = (x0 + x1) / jnp.linalg.norm(_flat(x0 + x1), axis=1)[:, None, None, None] * r[:, None, None, None]
    np.testing.assert_allclose(geometry.slerp(x0, x1, 0.5), mid, rtol=1e-12, atol=1e-12)


def test_chart_flattens_image_shaped_points():
    x = _images(jax.random.PRNGKey(13))
    r = jnp.linalg.norm(_flat(x), axis=1)
    z = geometry.stereographic(x, r)
    assert z.shape == (4, 29)
    np.testing.assert_allclose(z, geometry.stereographic(_flat(x), r[:, None]), rtol=1e-13)
    np.testing.assert_allclose(geometry.inverse_stereographic(z, r), _flat(x), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(geometry.squared_norm(x), r**2, rtol=1e-13)
    assert geometry.stereographic_metric(z, r).shape == (4,)


def test_per_sample_weights_broadcast_across_the_batch_and_bad_shapes_fail():
    x0, x1 = _points(jax.random.PRNGKey(14), batch=1), _points(jax.random.PRNGKey(15), batch=1)
    ws = jnp.linspace(0, 1, 6)
    path = geometry.slerp(x0, x1, ws[:, None])  # one pair, six weights -> six points
    assert path.shape == (6, N)
    np.testing.assert_allclose(path[3], geometry.slerp(x0, x1, ws[3])[0], atol=1e-12)
    with pytest.raises(ValueError, match="one value per sample"):
        geometry.lerp(_images(jax.random.PRNGKey(16)), _images(jax.random.PRNGKey(17)), jnp.ones((4, 3)))
