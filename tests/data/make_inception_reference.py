"""Writes tests/data/inception_reference.npz: pytorch-fid's own FID Inception-v3 run on fixed
inputs with deterministic weights, the reference for tests/test_inception.py.

Run it where torch, torchvision and pytorch-fid are installed (never from the tests or the package):

    /work/torchenv/bin/python tests/data/make_inception_reference.py [--check_converter]

The weights come from `deterministic_state_dict`, pure numpy, which the JAX test calls too, so
the fixture stores only names and shapes, not the 24M weights. pytorch-fid's `fid_inception_v3`
downloads the real weights; here its download is replaced by these weights and everything else
(`InceptionV3([3], resize_input=True, normalize_input=True)`, the FIDInception* blocks,
torchvision's Inception3) runs as shipped, with a strict `load_state_dict`.

`--check_converter` also saves the weights as a .pth in /tmp and runs
`python -m isodiff_jax.analysis.networks.inception convert` on it, then loads the .npz with `load`. That
needs torch and jax in one interpreter, which only this offline set-up has (torch is not a
project dependency), so the converter is checked here and not in the test suite; run it with
PYTHONPATH=.:.venv/lib/python3.12/site-packages so the torch interpreter also sees jax.

Inputs: three 28×36 images (upsampled to 299, non-square to catch H/W mix-ups) and one 331×307
image (downsampled), uint8 from a seeded generator, /255 as pytorch-fid's loaders give them;
plus a direct check of `F.interpolate(mode="bilinear", align_corners=False)` up and down.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

SEED = 2015
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_reference.npz")


def deterministic_state_dict(names, shapes, seed: int) -> dict[str, np.ndarray]:
    """Weights that keep activations O(1) through the 94 conv/BN/ReLU layers: conv weights
    N(0, 2/fan_in) (He), BN weight ~U(0.5, 1.5), bias and running_mean ~N(0, 0.1²),
    running_var ~U(0.5, 1.5); one generator per tensor, seeded by (seed, index)."""
    out = {}
    for i, (name, shape) in enumerate(zip(names, shapes)):
        rng, kind = np.random.default_rng([seed, i]), name.rsplit(".", 1)[-1]
        shape = tuple(int(s) for s in shape)
        if kind == "num_batches_tracked":
            value = np.zeros(shape, np.int64)
        elif kind == "weight" and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif kind in ("weight", "running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif kind in ("bias", "running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            raise ValueError(f"no rule for {name}")
        out[name] = value if kind == "num_batches_tracked" else value.astype(np.float32)
    return out


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {"small": rng.integers(0, 256, (3, 3, 28, 36), dtype=np.uint8),
            "large": rng.integers(0, 256, (1, 3, 331, 307), dtype=np.uint8),
            "resize_in": rng.uniform(0, 1, (2, 3, 7, 9)).astype(np.float32)}


def build(state_dict):
    """pytorch-fid's InceptionV3 with `state_dict` in place of the downloaded weights."""
    from unittest import mock

    from pytorch_fid import inception
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state_dict):
        model = inception.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    return model.eval()


def names_and_shapes():
    """The state dict's names and shapes, from pytorch-fid's construction without its download."""
    from pytorch_fid import inception
    model = inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [("Mixed_5b", inception.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", inception.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", inception.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", inception.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", inception.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", inception.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", inception.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", inception.FIDInceptionE_1(1280)),
                        ("Mixed_7c", inception.FIDInceptionE_2(2048))]:
        setattr(model, name, block)
    items = list(model.state_dict().items())
    return [k for k, _ in items], [tuple(v.shape) for k, v in items]


def check_converter(state_dict, reference):
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        pth, npz = os.path.join(tmp, "fid_inception.pth"), os.path.join(tmp, "inception_fid.npz")
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, pth)
        subprocess.run([sys.executable, "-m", "isodiff_jax.analysis.networks.inception", "convert",
                        "--torch", pth, "--out", npz], check=True)
        from isodiff_jax.analysis.networks import inception
        small = np.asarray(inputs()["small"], np.float32).transpose(0, 2, 3, 1) / 127.5 - 1
        ours = inception.load(npz).features(small)
        print(f"converter round trip: {len(np.load(npz).files)} arrays, "
              f"max |ours - torch| = {np.abs(ours - reference).max():.3g}")


def main():
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    names, shapes = names_and_shapes()
    state_dict = deterministic_state_dict(names, shapes, SEED)
    model = build({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    x = inputs()
    with torch.no_grad():
        features = {k: model(torch.from_numpy(x[k].astype(np.float32) / 255))[0][:, :, 0, 0].numpy()
                    for k in ("small", "large")}
        resize_in = torch.from_numpy(x["resize_in"])
        up = F.interpolate(resize_in, size=(20, 20), mode="bilinear", align_corners=False).numpy()
        down = F.interpolate(resize_in, size=(4, 4), mode="bilinear", align_corners=False).numpy()
    padded = np.full((len(shapes), 4), -1, np.int64)
    for i, s in enumerate(shapes):
        padded[i, :len(s)] = s
    np.savez_compressed(OUT, seed=SEED, names=np.array(names), shapes=padded, ndims=np.array([len(s) for s in shapes]),
                        small=x["small"], large=x["large"], features_small=features["small"],
                        features_large=features["large"], resize_in=x["resize_in"], resize_up=up, resize_down=down,
                        versions=np.array([torch.__version__, __import__("torchvision").__version__,
                                           __import__("pytorch_fid").__version__]))
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1e3:.0f} kB); feature scale "
          f"{np.abs(features['small']).mean():.3g}, max {np.abs(features['small']).max():.3g}")
    if "--check_converter" in sys.argv:
        check_converter(state_dict, features["small"])


if __name__ == "__main__":
    main()
