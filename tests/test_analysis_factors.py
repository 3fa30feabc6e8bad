"""Ground truth on shapes: factor-RTL, editing precision, linear probes, Fréchet distances in
oracle features; checked on closed cases, then run through the real oracle and a trained model."""
import dataclasses

import jax
import numpy as np
import pytest

from isodiff_jax import diffusion
from isodiff_jax.analysis import load, registry, suite
from isodiff_jax.analysis.edits import factors, supervised
from isodiff_jax.analysis.measures import probe, quality
from isodiff_jax.analysis.networks import oracle
from isodiff_jax.data import shapes


pytestmark = pytest.mark.slow  # a trained oracle and the factor evaluators


def _path(num_frames, **moving):
    """Factors of one pair along num_frames frames: fixed except the given (K+1,) arrays."""
    base = {name: np.full((num_frames, 1), value) for name, value in
            dict(shape=0, object_hue=0.1, background_hue=0.6, scale=0.3, x=0.5, y=0.5).items()}
    base.update({k: np.asarray(v, np.float64).reshape(num_frames, 1) for k, v in moving.items()})
    return base


def test_factor_rtl_is_one_for_monotone_paths_and_counts_excursions():
    x = np.linspace(0.32, 0.68, 9)
    out = factors.path_factor_rtl(_path(9, x=x))
    np.testing.assert_allclose(out["x"], [1.0])
    assert np.isnan(out["y"]) and np.isnan(out["scale"])  # ends too close: no ratio
    # there and back beyond the end: 0.3 -> 0.7 -> 0.5 has length 0.4 + 0.2 over a chord 0.2
    out = factors.path_factor_rtl(_path(3, x=[0.3, 0.7, 0.5]))
    np.testing.assert_allclose(out["x"], [0.6 / 0.2])
    # hue monotone across the wrap-around 0.9 -> 0.1 (the short way) is monotone too
    out = factors.path_factor_rtl(_path(5, object_hue=np.mod(np.linspace(0.9, 1.1, 5), 1.0)))
    np.testing.assert_allclose(out["object_hue"], [1.0])
    out = factors.path_factor_rtl(_path(5, shape=[0, 1, 0, 2, 2]))
    assert out["shape_extra_changes"][0] == 2  # three changes where one was needed


def test_change_puts_every_factor_on_one_scale():
    assert factors.change("object_hue", 0.95, 0.05) == pytest.approx(0.2)
    assert factors.change("background_hue", 0.0, 0.5) == pytest.approx(1.0)
    assert factors.change("x", 0.3, 0.7) == pytest.approx(1.0)
    assert factors.change("shape", 1, 2) == 1.0


def test_oracle_factor_rtl_of_a_rendered_monotone_path_is_near_one(oracle16):
    f = shapes.sample_factors(3, np.zeros(5, np.int64))
    f["x"] = np.linspace(0.32, 0.68, 5)
    images = shapes.render(f, 16).astype(np.float32) / 127.5 - 1.0
    predicted = oracle16.predict(images)
    out = factors.path_factor_rtl({k: v[:, None] for k, v in predicted.items()})
    assert 1.0 <= out["x"][0] < 1.15, out["x"]


def test_direction_recovers_a_planted_direction_and_precision_counts_changes():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(400, 30))
    true = np.zeros(30)
    true[3] = 1.0
    d, sigma = supervised.direction(latents, latents @ true + 0.1 * rng.normal(size=400))
    assert d @ true > 0.9 and sigma == pytest.approx(np.std(latents @ d))
    original = dict(shape=np.zeros(4), object_hue=np.zeros(4), background_hue=np.full(4, 0.5),
                    scale=np.full(4, 0.3), x=np.full(4, 0.5), y=np.full(4, 0.5))
    edited = [{**original, "x": original["x"] + 0.1 * a, "y": original["y"] + 0.02} for a in (1, 2)]
    scores = supervised.precision(original, edited, "x")
    target, others = 0.15 / 0.4, 0.02 / 0.4
    assert scores["target"] == pytest.approx(target) and scores["others"] == pytest.approx(others)
    assert scores["precision"] == pytest.approx(target / (target + others))


def test_ridge_probe_matches_least_squares_and_scores_linear_features_perfectly():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(50, 5)), rng.normal(size=(5, 2))
    y = x @ w + 3.0
    np.testing.assert_allclose(probe.ridge_fit_predict(x, y, x[:7], ridge=1e-12), y[:7], atol=1e-8)
    train, test = shapes.sample_factors(0, np.arange(200)), shapes.sample_factors(1, np.arange(100))
    mixing = rng.normal(size=(10, 40))
    embed = lambda f: probe._probe_targets(f) @ mixing
    scores = probe.probe_scores(embed(train), train, embed(test), test, ridge=1e-9)
    assert scores["shape_accuracy"] == 1.0
    assert all(scores[f"r2_{name}"] > 0.999 for name in oracle.CONTINUOUS), scores


def test_chosen_ridge_is_the_validation_minimum_and_does_not_fit_noise():
    """Targets independent of many-dimensional features: a tiny penalty fits the noise (negative
    held-out R²), the validated one falls back to about the mean."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2000)) * np.exp(rng.normal(size=2000))  # anisotropic, like h
    y = rng.normal(size=(300, 2))
    chosen = probe.choose_ridge(x[:200], y[:200])
    errors = [np.sum((probe.ridge_fit_predict(x[:150], y[:150], x[150:200], ridge=r) - y[150:200]) ** 2)
              for r in probe.RIDGE_GRID]
    assert chosen == probe.RIDGE_GRID[int(np.argmin(errors))]
    r2 = lambda ridge: 1 - np.sum((probe.ridge_fit_predict(x[:200], y[:200], x[200:], ridge=ridge) - y[200:]) ** 2) \
        / np.sum((y[200:] - y[200:].mean(axis=0)) ** 2)
    assert r2(1e-6) < -0.05 and r2(chosen) > -0.05


def test_frechet_evaluator_reports_the_real_floor_and_needs_enough_real_images():
    rng = np.random.default_rng(2)
    real, generated = rng.normal(size=(40, 3)), rng.normal(size=(20, 3)) + 2.0
    out = dict(quality.frechet_distances("fd_test", generated, real))
    assert out["fd_test"] > 10 and out["fd_test_real_vs_real"] < 2
    with pytest.raises(ValueError, match="needs 40 real images"):
        list(quality.frechet_distances("fd_test", generated, real[:30]))
    assert quality.confident_fraction(np.array([[0.95, 0.05], [0.6, 0.4]])) == 0.5


def test_editor_without_shift_is_the_plain_sampler_and_h_shifts_move_images(trained_workdir):
    spec, params, _ = load.load(trained_workdir)
    editor = supervised.Editor(spec, sample_steps=4, h_min_t=50, batch_size=4)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (3, *spec.image_shape))
    plain = diffusion.ddim_sample(lambda x, t: spec.eps(params, x, t), spec.noise_schedule, x_T, 4, clip_x0=1.0)
    np.testing.assert_allclose(editor.decode(params, x_T), plain, atol=1e-5)
    assert list(editor.timesteps[editor.edit_steps]) == [75, 50]
    images, hs = editor.h_along_paths(params, x_T)
    np.testing.assert_allclose(images, plain, atol=1e-5)
    assert hs.shape == (2, 3, int(np.prod(editor.h_shape)))
    shifts = editor.h_shifts(np.repeat(hs, 4, axis=1) + np.random.default_rng(0).normal(size=(2, 12, hs.shape[-1])),
                             np.arange(12.0))
    assert np.all(shifts[2:] == 0) and np.all(np.any(shifts[:2] != 0, axis=(1, 2, 3)))
    asyrp = editor.decode(params, x_T, 50 * shifts)
    assert not np.allclose(asyrp, plain, atol=1e-3)
    # edits decoded together, 4 rows per call (the last call padded), each as if decoded alone
    together = editor.decode_many(params, [(x_T, None), (x_T[:1], 50 * shifts), (x_T, 50 * shifts)])
    assert [len(images) for images in together] == [3, 1, 3]
    for images, alone in zip(together, (plain, asyrp[:1], asyrp)):
        np.testing.assert_allclose(images, alone, atol=1e-5)
    both = supervised.Editor(spec, sample_steps=4, h_min_t=50, h_edit="both")  # the shifted ε̂ in both DDIM terms
    np.testing.assert_allclose(both.decode(params, x_T), plain, atol=1e-5)
    assert not np.allclose(both.decode(params, x_T, 50 * shifts), asyrp, atol=1e-3)
    with pytest.raises(ValueError, match="no DDIM step to edit"):
        supervised.Editor(spec, sample_steps=4, h_min_t=99)
    with pytest.raises(ValueError, match="h_edit"):
        supervised.Editor(spec, sample_steps=4, h_min_t=50, h_edit="direction")


def test_x_T_edits_are_put_back_on_each_samples_sphere():
    rng = np.random.default_rng(8)
    x_T, shift = rng.normal(size=(3, 4, 4, 3)), 5.0 * rng.normal(size=(4, 4, 3))
    edited = supervised.edit_x_T(x_T, shift)
    np.testing.assert_allclose(np.linalg.norm(edited.reshape(3, -1), axis=1),
                               np.linalg.norm(x_T.reshape(3, -1), axis=1), rtol=1e-5)
    cos = np.sum(edited.reshape(3, -1) * (x_T + shift).reshape(3, -1), axis=1) / (
        np.linalg.norm(edited.reshape(3, -1), axis=1) * np.linalg.norm((x_T + shift).reshape(3, -1), axis=1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)  # a radial rescaling of x_T + shift


def test_metrics_needing_the_oracle_or_shapes_say_so(trained_workdir):
    spec = load.load(trained_workdir).spec
    with pytest.raises(ValueError, match="--oracle"):
        registry.check(["edit"], spec, registry.Resources())
    with pytest.raises(ValueError, match="--inception"):
        registry.check(["fd"], spec, registry.Resources())
    other = dataclasses.replace(spec, data=dataclasses.replace(spec.data, name="cifar10"))
    assert "shapes" in registry.missing("probe", other.data.name, {"oracle"})
    with pytest.raises(ValueError, match="probe needs the shapes"):
        suite.Suite(other, ["probe"])


def test_oracle_metrics_run_through_the_cli(trained_workdir, oracle16, tmp_path):
    import json
    from isodiff_jax.analysis import cli
    out = tmp_path / "analysis"
    oracle.save(oracle16, str(tmp_path / "oracle"), {})
    cli.main(["--workdir", trained_workdir, "--out", str(out), "--oracle", str(tmp_path / "oracle"),
              "--metrics", "fd,factor_rtl,edit,probe", "--sample_steps", "4", "--num_pairs", "4",
              "--num_fd_samples", "16", "--num_label", "16", "--num_edit", "4", "--h_min_t", "50",
              "--timesteps", "50"])
    m = json.load(open(out / "metrics.json"))["metrics"]
    assert m["fd_oracle"] >= 0 and 0 <= m["oracle_confident_fraction"] <= 1
    assert m["factor_rtl_shape_extra_changes"] >= 0
    assert all(0 <= m[f"edit_{s}_precision"] <= 1 for s in supervised.SPACES)
    assert -10 < m["probe_r2"] <= 1 and 0 <= m["probe_shape_accuracy"] <= 1
    for name in ("editing_xT.png", "editing_h.png"):
        assert (out / name).stat().st_size > 1000
