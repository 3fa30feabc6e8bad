"""experiments/toy_sphere.py: its smallest setting end to end, resuming, and its geometry numbers
against dense float64 references and closed forms."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import json_numbers, load_module

from isodiff_jax import geometry

pytestmark = pytest.mark.slow  # trains the toy encoders


@pytest.fixture(scope="module")
def toy():
    return load_module("experiments/toy_sphere.py")


def test_quick_run_writes_finite_numbers_and_pictures_then_resumes(toy, tmp_path, capsys):
    out = str(tmp_path / "toy")
    summary = toy.main(["--quick", "--out", out, "--no-progress"])
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)
    assert saved["aggregate"].keys() == set(toy.VARIANTS)
    for variant in toy.VARIANTS:
        assert set(toy.METRICS) <= saved["aggregate"][variant].keys()
    numbers = json_numbers(saved)
    assert numbers and all(math.isfinite(n) for n in numbers)
    for name in summary["pictures"]:
        assert os.path.getsize(os.path.join(out, name)) > 1000
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert len(runs) == 2 * len(toy.VARIANTS)  # a JSON and the parameters per run
    mtimes = {r: os.path.getmtime(os.path.join(out, "runs", r)) for r in runs}
    capsys.readouterr()

    again = toy.main(["--quick", "--out", out, "--no-progress"])
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(toy.VARIANTS) and "finished" not in printed
    assert mtimes == {r: os.path.getmtime(os.path.join(out, "runs", r)) for r in runs}
    assert again["aggregate"] == summary["aggregate"]
    with pytest.raises(SystemExit, match="other settings"):
        toy.main(["--quick", "--steps", "30", "--out", out, "--no-progress"])


def _sphere_points(key, count=64):
    x = jax.random.normal(key, (count, 3), jnp.float64)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _dense_reference(encode, x):
    """(tangent singular values (B, 2), rank·L_iso on the sphere) from jacfwd, explicit P, float64."""
    jac = jax.vmap(jax.jacfwd(lambda p: encode(p[None])[0]))(x)  # (B, m, 3)
    projector = jnp.eye(3) - jnp.einsum("bi,bj->bij", x, x)
    gram = np.asarray(jnp.einsum("bij,bmi,bmk,bkl->bjl", projector, jac, jac, projector))
    eig = np.clip(np.linalg.eigvalsh(gram), 0, None)[:, ::-1][:, :2]  # drops the normal zero
    rank = min(jac.shape[1], 2)
    return np.sqrt(eig), rank * np.mean(np.sum(eig**2, 1)) / np.mean(np.sum(eig, 1)) ** 2


def test_scaled_rotation_is_an_isometry(toy):
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    encode = lambda x: 2.5 * x @ jnp.asarray(q).T
    x = _sphere_points(jax.random.PRNGKey(0))
    s = toy.tangent_singular_values(encode, x)
    np.testing.assert_allclose(s, 2.5, rtol=1e-12)
    np.testing.assert_allclose(toy.exact_rank_l_iso(encode, x, "sphere"), 1.0, rtol=1e-12)
    np.testing.assert_allclose(toy.exact_rank_l_iso(encode, x, "euclidean"), 1.0, rtol=1e-12)
    numbers = toy.geometry_of(encode, x)
    np.testing.assert_allclose([numbers["cn_mean"], numbers["cn_median"]], 1.0, rtol=1e-12)
    assert numbers["cn_std"] < 1e-12 and numbers["log_scale_std"] < 1e-12
    np.testing.assert_allclose(numbers["ambient_cn_median"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(numbers["normal_fraction"], 1 / 3, rtol=1e-12)  # one of three equal directions


def test_tangent_basis_is_orthonormal_and_tangent(toy):
    x = jnp.concatenate([_sphere_points(jax.random.PRNGKey(1)), jnp.eye(3), -jnp.eye(3)])
    basis = toy.tangent_basis(x)
    np.testing.assert_allclose(jnp.einsum("bij,bik->bjk", basis, basis), np.broadcast_to(np.eye(2), (len(x), 2, 2)),
                               atol=1e-14)
    np.testing.assert_allclose(jnp.einsum("bi,bij->bj", x, basis), 0.0, atol=1e-14)


def test_random_network_matches_dense_reference(toy):
    model = toy.AutoEncoder(width=16, depth=2)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), toy.init_params(model, 3))
    encode = toy.encoder_of(model, params)
    x = _sphere_points(jax.random.PRNGKey(2))
    s_ref, l_ref = _dense_reference(encode, x)
    np.testing.assert_allclose(toy.tangent_singular_values(encode, x), s_ref, rtol=1e-7)
    np.testing.assert_allclose(toy.exact_rank_l_iso(encode, x, "sphere"), l_ref, rtol=1e-10)


def test_reference_maps_have_their_closed_form_distortion(toy):
    """Equidistant: CN = ρ/sin ρ; Lambert: CN = 1/cos²(ρ/2); stereographic: CN = 1 (conformal) but
    rank·L_iso = mean g⁻² / (mean g⁻¹)² > 1 (its scale 1/√g varies), ρ the angle from the south pole."""
    x = _sphere_points(jax.random.PRNGKey(3), 256)
    x = x.at[:, 2].set(-jnp.abs(x[:, 2]))  # the southern hemisphere, away from the north pole
    rho = np.arccos(-np.asarray(x[:, 2]))
    cn = lambda name: toy.condition_numbers(toy.REFERENCES[name], x)
    np.testing.assert_allclose(cn("azimuthal_equidistant"), rho / np.sin(rho), rtol=1e-10)
    np.testing.assert_allclose(cn("lambert_equal_area"), 1 / np.cos(rho / 2) ** 2, rtol=1e-10)
    np.testing.assert_allclose(cn("stereographic"), 1.0, rtol=1e-10)
    g = geometry.stereographic_metric(geometry.stereographic(x, 1.0), 1.0)
    expected = np.mean(g**-2.0) / np.mean(g**-1.0) ** 2
    np.testing.assert_allclose(toy.exact_rank_l_iso(toy.REFERENCES["stereographic"], x, "sphere"), expected,
                               rtol=1e-12)
    assert expected > 1.01
    for name, encode in toy.REFERENCES.items():
        _, l_ref = _dense_reference(encode, x)
        np.testing.assert_allclose(toy.exact_rank_l_iso(encode, x, "sphere"), l_ref, rtol=1e-10, err_msg=name)


def test_domain_samples_lie_on_the_sphere_below_the_cap(toy):
    x = np.asarray(toy.sample_domain(jax.random.PRNGKey(4), 4096, 30.0))
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-5)
    assert x[:, 2].max() <= math.cos(math.radians(30.0)) + 1e-6
    # uniform by area: the height is uniform on [−1, cos 30°], so its mean is the midpoint
    assert abs(x[:, 2].mean() - (math.cos(math.radians(30.0)) - 1) / 2) < 0.03
