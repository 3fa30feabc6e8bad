"""RTL / mRTL and the Fréchet distance against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isodiff_jax.analysis.measures import frechet, rtl


def test_rtl_of_a_straight_path_is_one():
    a, b = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[0.5, -1.0, 2.0]])
    path = jnp.stack([a + w * b for w in np.linspace(0, 1, 11) ** 2])  # uneven spacing, same line
    np.testing.assert_allclose(rtl.relative_trajectory_length(path), [1.0], rtol=1e-12)


@pytest.mark.parametrize("segments", [2, 5, 40])
def test_rtl_of_a_half_circle_is_its_inscribed_polygon_over_the_diameter(segments):
    angle = jnp.linspace(0, jnp.pi, segments + 1)
    path = 3.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)[:, None, :]
    expected = segments * np.sin(np.pi / (2 * segments))  # K chords of 2r sin(π/2K) over 2r
    np.testing.assert_allclose(rtl.relative_trajectory_length(path), [expected], rtol=1e-12)


def test_a_linear_map_of_a_lerp_path_has_rtl_one_but_a_slerp_path_does_not():
    key = jax.random.PRNGKey(0)
    A = jax.random.normal(key, (6, 10), jnp.float64)
    encode = lambda x: x @ A.T
    x0, x1 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 10), jnp.float64)
    lerp_path = jnp.stack([x0 + w * (x1 - x0) for w in jnp.linspace(0, 1, 9)])
    np.testing.assert_allclose(rtl.relative_trajectory_length(jax.lax.map(encode, lerp_path)), 1.0, rtol=1e-12)
    assert np.all(rtl.path_rtl(encode, x0, x1, 8) > 1.0)  # an arc maps to an ellipse arc


def test_slerp_path_stays_on_the_sphere_and_ends_at_the_end_points():
    x0, x1 = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 50), jnp.float64)
    x1 = x1 / jnp.linalg.norm(x1, axis=-1, keepdims=True) * jnp.linalg.norm(x0, axis=-1, keepdims=True)
    path = rtl.slerp_path(x0, x1, 10)
    np.testing.assert_allclose(path[0], x0, atol=1e-12)
    np.testing.assert_allclose(path[-1], x1, atol=1e-12)
    np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1), jnp.broadcast_to(jnp.linalg.norm(x0, axis=-1), (11, 3)),
                               rtol=1e-12)


def test_slerp_path_of_images_interpolates_whole_samples_not_pixels():
    x0, x1 = jax.random.normal(jax.random.PRNGKey(4), (2, 3, 4, 4, 3), jnp.float64)
    path = rtl.slerp_path(x0, x1, 6)
    flat = rtl.slerp_path(x0.reshape(3, -1), x1.reshape(3, -1), 6)
    np.testing.assert_allclose(path.reshape(7, 3, -1), flat, rtol=1e-12)
    # unequal end norms: the middle point's norm follows the whole vectors' angle, not each pixel's
    theta = jnp.arccos(jnp.sum(flat[0] * flat[-1], -1) / jnp.linalg.norm(flat[0], axis=-1)
                       / jnp.linalg.norm(flat[-1], axis=-1))
    half = jnp.sin(theta / 2) / jnp.sin(theta)
    np.testing.assert_allclose(path[3].reshape(3, -1), half[:, None] * (flat[0] + flat[-1]), rtol=1e-12)


def test_mrtl_evaluator_measures_per_timestep_and_mean_values():
    A = jax.random.normal(jax.random.PRNGKey(3), (5, 2 * 2 * 3))
    encode = lambda a, x, t: jnp.tanh(x.reshape(x.shape[0], -1) @ a.T * (1 + t[:, None] / 1000))
    measured = rtl.Mrtl(encode, image_shape=(2, 2, 3), timesteps=(100, 900), num_pairs=6, num_segments=8,
                        batch_size=4, seed=4).measure(A)
    out, values = measured.values, measured.pictures["rtl_values"]
    assert list(out) == list(rtl.value_names((100, 900)))
    assert values.shape == (2, 6) and np.all(values >= 1.0)
    assert out["mrtl_over_floor"] == pytest.approx(out["mrtl"] / out["mrtl_floor"]) and out["mrtl_floor"] > 1
    np.testing.assert_allclose(out["mrtl"], values.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["mrtl_t100"], values[0].mean(), rtol=1e-6)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)  # diagonal covariances commute
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-10)
    # a full covariance rotated by the same orthogonal Q on both sides gives the same distance
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    np.testing.assert_allclose(frechet.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T),
                               expected, rtol=1e-8)


@pytest.mark.parametrize("n, m, d", [(30, 50, 8), (12, 9, 40), (20, 60, 20)])
def test_frechet_distance_of_features_equals_the_statistics_form(n, m, d):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(m, d)) * 2 + 1
    expected = frechet.frechet_distance(*frechet.feature_statistics(a), *frechet.feature_statistics(b))
    np.testing.assert_allclose(frechet.frechet_distance_of_features(a, b), expected, rtol=1e-7)  # the eigh form loses ~1e-8 on rank-deficient Σ


def test_frechet_distance_of_identical_sets_is_zero_and_of_shifted_sets_the_shift():
    features = np.random.default_rng(1).normal(size=(500, 8))
    assert frechet.frechet_distance_of_features(features, features) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(8.0)
    assert frechet.frechet_distance_of_features(features, features + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-8)
    with pytest.raises(ValueError, match="shapes"):
        frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_ppl_pair_values_of_the_identity_sampler_are_the_squared_slerp_speed():
    from isodiff_jax.analysis.measures import ppl
    x0, x1 = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 4, 4, 3), jnp.float64)
    w = jnp.array([0.1, 0.5, 0.9])
    values = ppl.pair_values(lambda x: x, ppl.pixel_l2, x0, x1, w, 1e-5)
    f0, f1 = x0.reshape(3, -1), x1.reshape(3, -1)
    cos = jnp.sum(f0 * f1, -1) / jnp.linalg.norm(f0, axis=-1) / jnp.linalg.norm(f1, axis=-1)
    theta = jnp.arccos(cos)[:, None]
    velocity = theta / jnp.sin(theta) * (-jnp.cos((1 - w[:, None]) * theta) * f0 + jnp.cos(w[:, None] * theta) * f1)
    np.testing.assert_allclose(values, jnp.mean(velocity ** 2, axis=-1), rtol=1e-3)


def test_paths_refuse_end_points_of_different_shapes():
    from isodiff_jax.analysis.measures import ppl
    x0, x1 = jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 2))
    with pytest.raises(AssertionError, match="different shapes"):
        rtl.slerp_path(x0, x1, 4)
    with pytest.raises(AssertionError, match="different shapes"):
        ppl.pair_values(lambda x: x, ppl.pixel_l2, x0, x1, jnp.zeros(2), 1e-4)


def test_ppl_trimming_uses_sample_values_as_bounds_and_drops_nothing_below_100():
    from isodiff_jax.analysis.measures import ppl
    values = np.random.default_rng(5).exponential(size=99)
    assert ppl.trimmed_mean(values) == pytest.approx(values.mean(), rel=1e-12)
    values = np.arange(1000.0)  # 1st/99th percentiles with lower/higher interpolation: 9 and 990
    assert ppl.trimmed_mean(values) == pytest.approx(np.arange(9.0, 991.0).mean(), rel=1e-12)


def test_mrtl_of_an_exact_isometry_is_its_floor_not_one():
    """The identity (and any orthogonal map) maps slerp's arc to the same arc: RTL = the inscribed
    K-gon over the chord, the floor reported beside mRTL; (θ/2)/sin(θ/2) ≈ 1.11 as K grows."""
    Q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(48, 48)))
    encode = lambda q, x, t: 2.0 * x.reshape(x.shape[0], -1) @ q.T
    out = dict(rtl.Mrtl(encode, image_shape=(4, 4, 3), timesteps=(10,), num_pairs=6, num_segments=12,
                        batch_size=4).run(jnp.asarray(Q)))
    assert out["mrtl"] > 1.05 and out["mrtl_over_floor"] == pytest.approx(1.0, rel=1e-5)
    theta = np.pi / 2  # end points on one circle: the inscribed K-gon, then the arc
    x0, x1 = jnp.array([[2.0, 0.0]], jnp.float64), jnp.array([[0.0, 2.0]], jnp.float64)
    np.testing.assert_allclose(rtl.isometry_floor(x0, x1, 7), 7 * np.sin(theta / 14) / np.sin(theta / 2), rtol=1e-12)
    np.testing.assert_allclose(rtl.isometry_floor(x0, x1, 10**4), (theta / 2) / np.sin(theta / 2), rtol=1e-8)


def test_ppl_trims_per_sample_values_not_batch_means():
    from isodiff_jax.analysis.measures import ppl
    values = np.random.default_rng(2).uniform(0.9, 1.1, 1000)
    values[[3, 205, 407, 609, 811]] = 1e6  # five outliers in five different batches of 10
    assert ppl.trimmed_mean(values) == pytest.approx(1.0, abs=0.02)
    batch_means = values.reshape(-1, 10).mean(axis=1)
    kept = batch_means[(batch_means >= np.percentile(batch_means, 1)) & (batch_means <= np.percentile(batch_means, 99))]
    assert kept.mean() > 1e3  # trimming batch means (the original code) keeps most outliers


def test_ppl_evaluator_names_its_distance():
    from isodiff_jax.analysis.measures import ppl
    out = ppl.Ppl(lambda scale, x: jnp.tanh(scale * x), image_shape=(4, 4, 3), num_samples=20,
                  batch_size=8, seed=6).measure(1.0)
    assert set(out.values) == {"ppl_pixel_l2"} and out.pictures["ppl_values"].shape == (20,)
    assert 0 < out.values["ppl_pixel_l2"] < np.inf


def test_inversion_of_an_exact_gaussian_model_reconstructs_and_psnr_matches_mse():
    """For data N(0, σ²I) the optimal ε̂ is linear; inversion + sampling then returns the input
    up to the discretization error, which shrinks with the number of steps."""
    from isodiff_jax import diffusion
    from isodiff_jax.analysis.measures import inversion
    schedule = diffusion.make_schedule("linear", 1000, dtype=jnp.float64)
    sigma2 = 0.25

    def eps_fn(s2, x, t):  # E[ε | x_t] for x0 ~ N(0, s2 I); the variance plays the parameters
        abar = schedule.alphas_cumprod[t][:, None, None, None]
        return jnp.sqrt(1 - abar) * x / (abar * s2 + 1 - abar)

    x0 = 0.5 * jax.random.normal(jax.random.PRNGKey(7), (4, 4, 4, 3), jnp.float64)
    measured = inversion.Inversion(eps_fn, schedule, x0, num_steps=50, batch_size=4).measure(sigma2)
    out = measured.values
    coarse = dict(inversion.Inversion(eps_fn, schedule, x0, num_steps=10, batch_size=4).run(sigma2))
    assert out["inversion_mse"] < 1e-3 and out["inversion_mse"] < coarse["inversion_mse"]
    mse, psnr = inversion.mse_and_psnr(np.zeros((1, 2)), np.full((1, 2), 0.2))
    np.testing.assert_allclose(psnr, 10 * np.log10(4 / 0.04))
    assert set(out) == set(inversion.VALUE_NAMES) and measured.pictures["inversion_pairs"][1].shape == (4, 4, 4, 3)
