"""Inception-v3 pool features for FID (method.md §6): the network pytorch-fid uses, in Flax, with
its weights read from a local file.

The network is `pytorch_fid.inception.InceptionV3(output_blocks=[3], resize_input=True,
normalize_input=True, use_fid_inception=True)`: the TF-2015 Inception that TTUR's FID code
uses (FIDInceptionA / C average-pool without the padded zeros, Mixed_7c max-pools), every
convolution followed by inference-mode BatchNorm (ε = 0.001) and ReLU, the input resized
bilinearly to 299×299 (half-pixel centres, no antialiasing: `F.interpolate(mode="bilinear",
align_corners=False)`), output the 2048-d average pool.

pytorch-fid takes images in [0, 1] and maps them to [-1, 1] after resizing; the resize is
affine-equivariant, so `features` takes our images, NHWC in [-1, 1], and resizes them directly.

Weights: the standard ones are pytorch-fid's port of TF's inception-2015-12-05,

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

Convert them once, where torch is installed (torch is not a dependency of this project):

    python -m isodiff_jax.analysis.networks.inception convert \\
        --torch pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The .npz keeps the torch state-dict names (`Mixed_5b.branch1x1.conv.weight`, ...) and layouts;
`load` maps them to Flax (OIHW → HWIO, BatchNorm weight/bias/running_mean/running_var →
scale/bias/mean/var). Then

    extractor = inception.load("inception_fid.npz")
    fid = frechet.frechet_distance_of_features(extractor.features(real), extractor.features(fake))

Convolutions run at `Precision.HIGHEST`, so accelerators do not drop to TF32/bf16 matmuls.
"""
import argparse
import dataclasses
import functools
import io
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from isodiff_jax import storage
from isodiff_jax.analysis.networks import torch_weights
from isodiff_jax.errors import MissingPath

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
SIZE = 299
FEATURES = 2048
# in the torch state dict but not on the path to the pool features: accepted and ignored
UNUSED_KEYS = ("fc.weight", "fc.bias")
UNUSED_SUFFIX = ".num_batches_tracked"
# Flax leaf name -> torch state-dict suffix, per collection
TORCH_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm with running statistics (ε = 0.001), ReLU."""
    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, self.strides, padding=((ph, ph), (pw, pw)), use_bias=False,
                    precision=jax.lax.Precision.HIGHEST, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    # TF's average pool divides by the number of real pixels under the window (FID patch); flax
    # counts them in the default float type, float64 under jax_enable_x64, hence the cast
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False).astype(x.dtype)


def _max_pool_same(x):
    return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_down(x):
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
    """FIDInceptionA: 1×1, 5×5, double 3×3 and average-pool branches."""
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 → 17 (Mixed_6a)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC: factorised 7×7 branches and an average-pool branch."""
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c, name="branch7x7_1")(x)
        b7 = BasicConv2d(c, **row, name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, **col, name="branch7x7_3")(b7)
        bd = BasicConv2d(c, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c, **col, name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c, **row, name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c, **col, name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, **row, name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 → 8 (Mixed_7a)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (`max_pool=False`, average pool) or FIDInceptionE_2 (`max_pool=True`)."""
    max_pool: bool

    @nn.compact
    def __call__(self, x):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, **row, name="branch3x3_2a")(b3),
                              BasicConv2d(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, **row, name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """images (B, 299, 299, 3) in [-1, 1] -> pool features (B, 2048). Submodule names are the torch ones."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_down(x)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_down(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def resize(images, size: int = SIZE):
    """(B, H, W, C) -> (B, size, size, C), bilinear with half-pixel centres and no antialiasing,
    i.e. torch's `F.interpolate(mode="bilinear", align_corners=False)` up and down."""
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, size, size, c), "linear", antialias=False)


@functools.cache
def _flax_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    variables = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(variables).items()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Torch state-dict name -> torch shape, for every tensor the pool features depend on."""
    return {_torch_name(path): shape if len(shape) != 4 else tuple(shape[i] for i in (3, 2, 0, 1))  # HWIO -> OIHW
            for path, shape in _flax_shapes().items()}


def _torch_name(path: tuple[str, ...]) -> str:
    collection, *modules, leaf = path
    return ".".join(modules) + "." + TORCH_NAMES[collection, leaf]


def variables_from_state_dict(state_dict, source: str) -> dict:
    """torch-named arrays -> Flax {"params", "batch_stats"} for FIDInceptionV3. Raises ValueError
    naming every missing, unexpected or mis-shaped key and `source` (the file they came from)."""
    unused = [k for k in state_dict if k in UNUSED_KEYS or k.endswith(UNUSED_SUFFIX)]
    torch_weights.check_keys(state_dict, expected_shapes(), source=source, ignored=unused,
                             what="a state dict of pytorch-fid's FID Inception-v3 (pt_inception-2015-12-05)")
    return torch_weights.to_flax(state_dict, _flax_shapes(), _torch_name)


@dataclasses.dataclass(frozen=True)
class InceptionFeatures:
    """FID Inception-v3 with loaded weights: `features(images)` -> (B, 2048) pool features."""
    variables: dict
    source: str

    @functools.cached_property
    def _network(self):
        return jax.jit(FIDInceptionV3().apply)

    @functools.cached_property
    def _resize(self):
        return jax.jit(resize)

    def features(self, images, batch_size: int = 50) -> np.ndarray:
        """images (N, H, W, 3) in [-1, 1], any H, W -> (N, 2048) float32. Runs in batches of
        `batch_size` (the last one padded), so the network compiles once per batch size."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Inception features take (N, H, W, 3) images in [-1, 1], got shape {images.shape}")
        if images.size and (images.min() < -1 - 1e-3 or images.max() > 1 + 1e-3):
            raise ValueError(f"images must lie in [-1, 1] (clip samples first), got values in "
                             f"[{images.min():.3g}, {images.max():.3g}]")
        batch_size = max(1, min(batch_size, len(images)))
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], np.float32)])
            out.append(np.asarray(self._network(self.variables, self._resize(padded)))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, FEATURES), np.float32)


def load(path: str) -> InceptionFeatures:
    """Reads an .npz written by `convert` (torch state-dict names and layouts)."""
    if not storage.exists(path):
        raise MissingPath(
            f"{path} does not exist. FID needs pytorch-fid's Inception weights: download {WEIGHTS_URL} "
            f"and convert them where torch is installed with `python -m isodiff_jax.analysis.networks.inception "
            f"convert --torch pt_inception-2015-12-05-6726825d.pth --out {path}` (see docs/fid.md)")
    state_dict = torch_weights.read_npz(path, what="FID Inception-v3 weights", expected=expected_shapes(),
                                        how="`python -m isodiff_jax.analysis.networks.inception convert` (docs/fid.md)")
    variables = variables_from_state_dict(state_dict, storage.absolute(path))
    return InceptionFeatures(variables=jax.device_put(variables), source=storage.absolute(path))


def convert(torch_path: str, out_path: str) -> None:
    """pytorch-fid's .pth -> .npz of the tensors the pool features use, names and layouts unchanged."""
    try:
        import torch
    except ImportError:
        raise SystemExit("converting needs torch, which this project does not depend on: "
                         "`pip install torch` (the CPU build is enough), then run the command again") from None
    state_dict = torch.load(storage.open_read(torch_path), map_location="cpu", weights_only=True)
    arrays = {k: v.numpy() for k, v in state_dict.items()}
    variables_from_state_dict(arrays, storage.absolute(torch_path))  # fail here, not at first use
    buffer = io.BytesIO()  # and exactly this path: np.savez would append .npz to a bare name
    np.savez(buffer, **{k: arrays[k].astype(np.float32) for k in expected_shapes()})
    storage.write_bytes(out_path, buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_npz = commands.add_parser("convert", help="pytorch-fid .pth -> .npz (needs torch)")
    to_npz.add_argument("--torch", required=True, help="pt_inception-2015-12-05-6726825d.pth")
    to_npz.add_argument("--out", required=True, help="the .npz to write, e.g. inception_fid.npz")
    args = parser.parse_args(argv)
    convert(args.torch, args.out)
    print(f"wrote {storage.absolute(args.out)} ({len(expected_shapes())} arrays)", file=sys.stderr)


if __name__ == "__main__":
    main()
