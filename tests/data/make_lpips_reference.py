"""Writes tests/data/lpips_reference.npz: LPIPS v0.1 distances computed by the lpips package
(richzhang/PerceptualSimilarity) in PyTorch, for tests/test_lpips.py to compare the JAX port with.

Run once, where torch, torchvision and lpips are installed (none is a dependency of this project):

    python tests/data/make_lpips_reference.py

It builds `lpips.LPIPS(net=..., pretrained=False, pnet_rand=True)` (nothing is downloaded or read
from disk), overwrites every parameter with `deterministic_state_dict` (pure numpy, so the test
regenerates the same weights without torch), and evaluates image pairs in float64 and float32.
The weights themselves are not stored, only the tensor names and shapes, the images and the
distances. The names are those of lpips.load's .npz: torchvision's `features.{i}.weight` and
lpips' `lin{k}.model.1.weight`.
"""
import importlib.metadata
import json
import os
import re
import zlib

import numpy as np

SEED = 20181
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lpips_reference.npz")
IMAGE_SHAPES = {"32": (2, 32, 32, 3), "48x64": (2, 48, 64, 3)}  # H ≠ W catches transposed axes


def deterministic_state_dict(shapes: dict, seed: int = SEED) -> dict:
    """name -> float32 array for every (name, shape): convolution weights ~ N(0, 2 / fan_in), biases
    ~ N(0, 0.02²), lin weights ~ U(0, 0.1) (non-negative like lpips' trained ones). Each tensor has
    its own stream, seeded by (seed, crc32(name)), so the order of `shapes` does not matter."""
    out = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.startswith("lin"):
            value = rng.uniform(0.0, 0.1, shape)
        elif name.endswith(".bias"):
            value = rng.normal(0.0, 0.02, shape)
        else:
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        out[name] = value.astype(np.float32)
    return out


def image_pairs(seed: int = SEED) -> dict:
    """Per size: (a, b) in [-1, 1], NHWC float32. a is smooth structure plus texture; b perturbs it
    by a different amount per pair."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, (n, h, w, c) in IMAGE_SHAPES.items():
        coarse = rng.uniform(-0.8, 0.8, (n, h // 8, w // 8, c))
        a = np.clip(coarse.repeat(8, 1).repeat(8, 2) + rng.normal(0, 0.1, (n, h, w, c)), -1, 1)
        amount = np.linspace(0.05, 0.4, n)[:, None, None, None]
        b = np.clip(a + amount * rng.normal(0, 1, a.shape), -1, 1)
        out[label] = (a.astype(np.float32), b.astype(np.float32))
    return out


def documented_name(lpips_name: str):
    """lpips.LPIPS state-dict name -> the .npz name, or None for the constant ScalingLayer buffers."""
    if lpips_name.startswith("scaling_layer."):
        return None
    if m := re.fullmatch(r"net\.slice\d+\.(\d+)\.(weight|bias)", lpips_name):
        return f"features.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"lins?\.?(\d+)\.model\.1\.weight", lpips_name):  # lin0... and lins.0...
        return f"lin{m[1]}.model.1.weight"
    raise ValueError(f"unexpected LPIPS tensor {lpips_name}")


def reference(net: str, pairs: dict) -> dict:
    import lpips
    import torch

    model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False).eval()
    names = {k: documented_name(k) for k in model.state_dict()}
    shapes = {v: tuple(model.state_dict()[k].shape) for k, v in names.items() if v is not None}
    weights = deterministic_state_dict(shapes)
    model.load_state_dict({k: torch.from_numpy(weights[v]) if v else model.state_dict()[k]
                           for k, v in names.items()}, strict=True)
    out = {f"{net}_shapes": np.array(json.dumps(shapes))}
    for dtype, torch_dtype in (("float64", torch.float64), ("float32", torch.float32)):
        model = model.to(torch_dtype)
        for label, (a, b) in pairs.items():
            a, b = (torch.from_numpy(x.transpose(0, 3, 1, 2)).to(torch_dtype) for x in (a, b))  # NCHW
            with torch.no_grad():
                d = model(a, b).reshape(-1)
            out[f"{net}_{label}_{dtype}"] = d.numpy().astype(np.float64)
    return out


def main():
    import torch
    import torchvision

    pairs = image_pairs()
    arrays = {"versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                                   f"lpips {importlib.metadata.version('lpips')}")}
    for label, (a, b) in pairs.items():
        arrays[f"a_{label}"], arrays[f"b_{label}"] = a, b
    for net in ("alex", "vgg"):
        arrays.update(reference(net, pairs))
    np.savez_compressed(OUT, **arrays)
    for k, v in arrays.items():
        if v.dtype == np.float64:
            print(k, v)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
