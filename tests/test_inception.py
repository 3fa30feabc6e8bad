"""The FID Inception-v3 against pytorch-fid's own network (tests/data/inception_reference.npz,
written by tests/data/make_inception_reference.py with deterministic weights that are
regenerated here in numpy, without torch)."""
import os
import pickle
import sys

import numpy as np
import pytest
from support import load_module

from isodiff_jax import errors
from isodiff_jax.analysis.measures import frechet
from isodiff_jax.analysis.networks import inception

DATA = os.path.join(os.path.dirname(__file__), "data")


def _maker():
    return load_module("tests/data/make_inception_reference.py")


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(DATA, "inception_reference.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def state_dict(reference):
    shapes = [tuple(s[:n]) for s, n in zip(reference["shapes"], reference["ndims"])]
    return _maker().deterministic_state_dict([str(n) for n in reference["names"]], shapes, int(reference["seed"]))


@pytest.fixture(scope="module")
def weights_file(state_dict, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("inception") / "state_dict.npz")
    np.savez(path, **state_dict)  # the whole torch state dict: fc and num_batches_tracked are ignored
    return path


@pytest.fixture(scope="module")
def extractor(weights_file):
    return inception.load(weights_file)


@pytest.fixture(scope="module")
def small_features(extractor, reference):
    return extractor.features(_nhwc(reference["small"]), batch_size=3)


def _nhwc(images_uint8):
    """pytorch-fid's (B, 3, H, W) input x/255 in [0, 1] is our (B, H, W, 3) x/127.5 − 1 in [-1, 1]."""
    return images_uint8.astype(np.float32).transpose(0, 2, 3, 1) / 127.5 - 1.0


def _relative_error(ours, theirs):
    return np.abs(ours - theirs).max() / np.abs(theirs).max()


def test_resize_matches_torch_bilinear(reference):
    x = reference["resize_in"].transpose(0, 2, 3, 1)
    for name, size in (("resize_up", 20), ("resize_down", 4)):
        ours = np.asarray(inception.resize(x, size)).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(ours, reference[name], atol=1e-6, err_msg=name)


def test_features_match_pytorch_fid(extractor, reference, small_features):
    # small images are upsampled to 299, the large one downsampled; one network compile (batch 3)
    small = small_features
    large = extractor.features(_nhwc(reference["large"]), batch_size=3)
    assert small.shape == (3, 2048) and small.dtype == np.float32
    for ours, theirs in ((small, reference["features_small"]), (large, reference["features_large"])):
        print(f"max abs error {np.abs(ours - theirs).max():.3g}, relative to max |feature| "
              f"{_relative_error(ours, theirs):.3g}, max elementwise relative "
              f"{np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-3)):.3g}")
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_batching_does_not_change_features(extractor, reference):
    # 4 images in batches of 3: the second batch is one image padded with zeros (no new compile)
    images = _nhwc(reference["small"])
    features = extractor.features(np.concatenate([images, images[:1]]), batch_size=3)
    assert features.shape == (4, 2048)
    np.testing.assert_allclose(features[3], features[0], rtol=1e-5, atol=1e-5)


def test_fid_of_features_with_themselves_is_zero(small_features):
    # frechet's two 2048×2048 eigendecompositions take most of this file's time (~10 s each here)
    value = frechet.frechet_distance_of_features(small_features, small_features)
    assert value < 1e-6 * np.sum(small_features.var(axis=0))


def test_images_outside_range_are_rejected(extractor, reference):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        extractor.features(reference["small"].astype(np.float32).transpose(0, 2, 3, 1))


def test_missing_file_says_how_to_get_weights(tmp_path):
    path = str(tmp_path / "inception_fid.npz")
    with pytest.raises(FileNotFoundError) as error:
        inception.load(path)
    message = str(error.value)
    for part in (path, inception.WEIGHTS_URL, "python -m isodiff_jax.analysis.networks.inception convert", "--torch"):
        assert part in message


def test_missing_extra_and_misshaped_keys_are_named(state_dict, tmp_path):
    broken = dict(state_dict)
    del broken["Mixed_6c.branch7x7_2.bn.running_var"]
    broken["Mixed_9z.conv.weight"] = np.zeros(3, np.float32)
    broken["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 3, 4), np.float32)
    path = str(tmp_path / "broken.npz")
    np.savez(path, **broken)
    with pytest.raises(ValueError) as error:
        inception.load(path)
    message = str(error.value)
    for part in (path, "missing keys: Mixed_6c.branch7x7_2.bn.running_var", "unexpected keys: Mixed_9z.conv.weight",
                 "Conv2d_1a_3x3.conv.weight has shape (32, 3, 3, 4), expected (32, 3, 3, 3)"):
        assert part in message


@pytest.mark.parametrize("kind", ["text", "pickle", "npy", "wrong keys"])
def test_a_file_that_is_not_the_weights_names_itself_and_the_expected_keys(tmp_path, kind):
    path = tmp_path / "inception_fid.npz"
    if kind == "text":
        path.write_text("not weights\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"Conv2d_1a_3x3.conv.weight": [0.0]}))
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        np.savez(path, weight=np.zeros(3))
    with pytest.raises(errors.InvalidValue) as error:
        inception.load(str(path))
    message = str(error.value)
    assert message.startswith(f"{path} is not ") and "allow_pickle" not in message, message
    assert "Conv2d_1a_3x3.bn.bias" in message and "(470 in all)" in message and len(message) < 800, message
    if kind == "wrong keys":
        assert "unexpected keys: weight" in message
    else:
        assert "not an .npz (zip) archive" in message and "analysis.networks.inception convert" in message


def test_expected_keys_are_pytorch_fids(reference):
    names = {str(n) for n in reference["names"]}
    used = {n for n in names if n not in inception.UNUSED_KEYS and not n.endswith(inception.UNUSED_SUFFIX)}
    shapes = {str(n): tuple(s[:k]) for n, s, k in zip(reference["names"], reference["shapes"], reference["ndims"])}
    assert inception.expected_shapes() == {n: shapes[n] for n in used}


def test_convert_without_torch_says_how(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(SystemExit, match="pip install torch"):
        inception.main(["convert", "--torch", str(tmp_path / "x.pth"), "--out", str(tmp_path / "x.npz")])
