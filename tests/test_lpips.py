"""LPIPS v0.1 in JAX against the lpips package in PyTorch (tests/data/lpips_reference.npz, written
by tests/data/make_lpips_reference.py; torch is not needed here)."""
import json
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import load_module

from isodiff_jax import errors
from isodiff_jax.analysis.measures import ppl
from isodiff_jax.analysis.networks import lpips

DATA = os.path.join(os.path.dirname(__file__), "data")


def _reference_module():
    return load_module("tests/data/make_lpips_reference.py")


make_reference = _reference_module()


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(DATA, "lpips_reference.npz")) as data:
        return {k: data[k] for k in data.files}


def _weights(reference, net):
    shapes = {k: tuple(v) for k, v in json.loads(str(reference[f"{net}_shapes"])).items()}
    return make_reference.deterministic_state_dict(shapes)


@pytest.fixture(scope="module")
def weight_files(reference, tmp_path_factory):
    """net -> an .npz in lpips.load's naming holding the reference run's weights."""
    directory = tmp_path_factory.mktemp("lpips")
    files = {}
    for net in lpips.NETS:
        files[net] = str(directory / f"lpips_{net}.npz")
        np.savez(files[net], **_weights(reference, net))
    return files


@pytest.fixture(scope="module")
def alex(weight_files):
    return lpips.load(weight_files["alex"])


@pytest.mark.parametrize("net", sorted(lpips.NETS))
def test_matches_the_lpips_package(net, reference, weight_files):
    shapes = json.loads(str(reference[f"{net}_shapes"]))
    assert {k: tuple(v) for k, v in shapes.items()} == lpips.expected_shapes(net)  # names and layouts as torch's
    metric = lpips.load(weight_files[net])
    assert metric.net == net and metric.name == f"lpips_{net}"
    for label in make_reference.IMAGE_SHAPES:
        got = np.asarray(metric.distance(jnp.asarray(reference[f"a_{label}"]), jnp.asarray(reference[f"b_{label}"])))
        want = reference[f"{net}_{label}_float64"]
        assert got.shape == want.shape and got.dtype == np.float32
        # float32 against torch's float64 run; measured: relative error ≤ 1.1e-6
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)


def test_zero_on_equal_images_and_symmetric(alex, reference):
    a, b = jnp.asarray(reference["a_32"]), jnp.asarray(reference["b_32"])
    assert np.all(np.asarray(alex.distance(a, a)) == 0.0)
    np.testing.assert_allclose(alex.distance(a, b), alex.distance(b, a), rtol=1e-6)


def test_distance_runs_inside_ppl_under_jit(alex):
    sample = jnp.tanh  # a stand-in sampler: x_T -> images in [-1, 1]
    x0, x1 = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 32, 32, 3), jnp.float32)
    w = jnp.array([0.25, 0.5], jnp.float32)
    eager = ppl.pair_values(sample, alex.distance, x0, x1, w, 1e-2)
    jitted = jax.jit(lambda *args: ppl.pair_values(sample, alex.distance, *args, 1e-2))(x0, x1, w)
    assert jitted.shape == (2,) and np.all(np.asarray(jitted) > 0)
    # d(x_a, x_b) / ε² of images 1e-2 apart: float32 rounding of the fused (jitted) and op-by-op
    # programs differs by about 1e-5 relative (1.03e-5 measured without XLA's optimisations)
    np.testing.assert_allclose(jitted, eager, rtol=3e-5)
    evaluator = ppl.Ppl(lambda _, x: sample(x), image_shape=(32, 32, 3), num_samples=4, batch_size=4,
                        distance=alex.distance, distance_name=alex.name, seed=1)
    results = evaluator.measure(None)
    assert np.isfinite(results.values["ppl_lpips_alex"]) and results.pictures["ppl_values"].shape == (4,)


def test_rejects_images_too_small_for_the_backbone(alex):
    tiny = jnp.zeros((1, 16, 16, 3), jnp.float32)
    with pytest.raises(ValueError, match="too small"):
        alex.distance(tiny, tiny)


def _corrupt(reference, tmp_path, change):
    weights = _weights(reference, "alex")
    change(weights)
    path = str(tmp_path / "bad.npz")
    np.savez(path, **weights)
    return path


def test_load_names_missing_extra_and_misshaped_keys(reference, tmp_path):
    path = _corrupt(reference, tmp_path, lambda w: w.pop("features.3.bias"))
    with pytest.raises(ValueError, match=r"bad\.npz.*missing keys: features\.3\.bias"):
        lpips.load(path)
    path = _corrupt(reference, tmp_path, lambda w: w.update({"lin5.model.1.weight": np.zeros((1, 8, 1, 1))}))
    with pytest.raises(ValueError, match=r"unexpected keys: lin5\.model\.1\.weight"):
        lpips.load(path)
    path = _corrupt(reference, tmp_path, lambda w: w.update({"lin2.model.1.weight": np.zeros((1, 10, 1, 1))}))
    wrong_shape = r"lin2\.model\.1\.weight has shape \(1, 10, 1, 1\), expected \(1, 384, 1, 1\)"
    with pytest.raises(ValueError, match=wrong_shape):
        lpips.load(path)
    with pytest.raises(ValueError, match="missing keys"):  # an alex file read as vgg
        lpips.load(_corrupt(reference, tmp_path, lambda w: None), net="vgg")
    np.savez(tmp_path / "other.npz", weight=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz holds none of the LPIPS tensors"):
        lpips.load(str(tmp_path / "other.npz"))


@pytest.mark.parametrize("kind", ["text", "pickle", "wrong keys"])
def test_a_file_that_is_not_the_weights_names_itself_and_the_expected_keys(tmp_path, kind):
    path = tmp_path / "lpips_alex.npz"
    if kind == "text":
        path.write_text("not weights\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"features.0.weight": [0.0]}))
    else:
        np.savez(path, **{"features.0.weight": np.zeros((64, 3, 11, 11), np.float32)})
    with pytest.raises(errors.InvalidValue) as error:
        lpips.load(str(path), net="alex")
    message = str(error.value)
    assert message.startswith(f"{path} is not ") and "allow_pickle" not in message, message
    assert "LPIPS-alex" in message and "features.0.bias" in message, message
    if kind == "wrong keys":
        assert "missing keys: features.0.bias" in message and "(14 in all)" in message
    else:
        assert "not an .npz (zip) archive" in message and "(15 in all)" in message
        assert "analysis.networks.lpips convert" in message


def test_load_of_a_missing_file_says_how_to_get_the_weights(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        lpips.load(str(tmp_path / "lpips_alex.npz"))
    message = str(error.value)
    for needed in ("alexnet-owt-7be5be79.pth", "pip install lpips", "weights/v0.1",
                   "python -m isodiff_jax.analysis.networks.lpips convert", "docs/lpips.md"):
        assert needed in message


def test_convert_without_torch_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail even where it is installed
    with pytest.raises(SystemExit, match="converting needs torch.*pip install torch"):
        lpips.main(["convert", "--net", "alex", "--backbone", "a.pth", "--lin", "alex.pth",
                    "--out", str(tmp_path / "lpips_alex.npz")])
