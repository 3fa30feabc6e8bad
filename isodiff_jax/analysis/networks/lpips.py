"""LPIPS v0.1 (Zhang et al. 2018) as a JAX distance for PPL (method.md §6), weights read from a
local file.

The network is `lpips.LPIPS(net="alex" | "vgg", version="0.1")` of richzhang/PerceptualSimilarity:

    d(a, b) = Σ_l mean_hw( w_l · (f̂_l(a) − f̂_l(b))² ),   f̂ = f / (sqrt(Σ_c f²) + 1e-10)

where f_l are the ReLU taps of torchvision's `alexnet().features` (relu1..relu5) or
`vgg16().features` (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) applied to (x − shift) / scale
(lpips' ScalingLayer), and w_l ≥ 0 are the 1×1 no-bias "lin" layers (their dropout is off at
evaluation). Images are NHWC in [-1, 1], lpips' own convention; AlexNet needs at least 31×31
pixels, VGG16 16×16. Convolutions run at `Precision.HIGHEST`, so accelerators do not drop to
TF32/bf16 matmuls.

Weights: the ImageNet backbones of torchvision,

    https://download.pytorch.org/models/alexnet-owt-7be5be79.pth
    https://download.pytorch.org/models/vgg16-397923af.pth

and the lin layers that `pip install lpips` puts at `lpips/weights/v0.1/{alex,vgg}.pth` (also in
the GitHub repository under that path). Convert them once, where torch is installed (torch is not
a dependency of this project):

    python -m isodiff_jax.analysis.networks.lpips convert --net alex \\
        --backbone alexnet-owt-7be5be79.pth --lin alex.pth --out lpips_alex.npz

The .npz keeps torch names and layouts: torchvision's `features.{i}.weight` / `features.{i}.bias`
for the backbone (i its index in `features`) and lpips' `lin{k}.model.1.weight` for the lin
layers; `load` maps them to Flax (OIHW → HWIO) and tells the network from the names. Then

    metric = lpips.load("lpips_alex.npz")
    ppl.Ppl(sample, image_shape=..., distance=metric.distance, distance_name=metric.name).run(params)

or `python -m isodiff_jax.analysis ... --lpips lpips_alex.npz`; PPL is then reported as
`ppl_lpips_alex` (docs/lpips.md).
"""
import argparse
import dataclasses
import functools
import io
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from isodiff_jax import storage
from isodiff_jax.analysis.networks import torch_weights
from isodiff_jax.errors import InvalidValue, MissingPath

BACKBONE_URLS = {"alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                 "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth"}
# lpips' ScalingLayer: ImageNet statistics mapped to inputs in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
LIN_KEY = re.compile(r"lin\d+\.model\.1\.weight")


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution of torchvision's `features` (followed there by ReLU); `index` is its position."""
    index: int
    name: str
    features: int
    kernel: int
    stride: int = 1
    padding: int = 1
    tap: bool = False  # LPIPS compares the ReLU output of this layer


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """nn.MaxPool2d(window, stride), no padding, ceil_mode=False."""
    window: int
    stride: int = 2


# the layers up to the last tap; the trailing max pool of `features` is unused
NETS = {
    "alex": (Conv(0, "conv1", 64, 11, stride=4, padding=2, tap=True), MaxPool(3),
             Conv(3, "conv2", 192, 5, padding=2, tap=True), MaxPool(3),
             Conv(6, "conv3", 384, 3, tap=True),
             Conv(8, "conv4", 256, 3, tap=True),
             Conv(10, "conv5", 256, 3, tap=True)),
    "vgg": (Conv(0, "conv1_1", 64, 3), Conv(2, "conv1_2", 64, 3, tap=True), MaxPool(2),
            Conv(5, "conv2_1", 128, 3), Conv(7, "conv2_2", 128, 3, tap=True), MaxPool(2),
            Conv(10, "conv3_1", 256, 3), Conv(12, "conv3_2", 256, 3), Conv(14, "conv3_3", 256, 3, tap=True),
            MaxPool(2),
            Conv(17, "conv4_1", 512, 3), Conv(19, "conv4_2", 512, 3), Conv(21, "conv4_3", 512, 3, tap=True),
            MaxPool(2),
            Conv(24, "conv5_1", 512, 3), Conv(26, "conv5_2", 512, 3), Conv(28, "conv5_3", 512, 3, tap=True)),
}
BACKBONE_NAMES = {"alex": "alexnet", "vgg": "vgg16"}


class Backbone(nn.Module):
    """x (B, H, W, 3) -> the ReLU taps [(B, h_l, w_l, C_l)] of a torchvision `features` stack."""
    layers: tuple[Conv | MaxPool, ...]

    @nn.compact
    def __call__(self, x):
        taps = []
        for layer in self.layers:
            if isinstance(layer, MaxPool):
                x = nn.max_pool(x, (layer.window,) * 2, (layer.stride,) * 2, padding="VALID")
                continue
            x = nn.relu(nn.Conv(layer.features, (layer.kernel,) * 2, (layer.stride,) * 2,
                                padding=[(layer.padding, layer.padding)] * 2,
                                precision=jax.lax.Precision.HIGHEST, name=layer.name)(x))
            if layer.tap:
                taps.append(x)
        return taps


def unit_normalize(f):
    """lpips.normalize_tensor over channels (the last axis)."""
    return f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + EPS)


class LpipsNet(nn.Module):
    """(a, b) images (B, H, W, 3) in [-1, 1] -> LPIPS v0.1 distances (B,)."""
    net: str

    @nn.compact
    def __call__(self, a, b):
        x = (jnp.concatenate([a, b]) - jnp.asarray(SHIFT, a.dtype)) / jnp.asarray(SCALE, a.dtype)
        taps = Backbone(NETS[self.net], name=BACKBONE_NAMES[self.net])(x)  # both images in one pass
        total = jnp.zeros((a.shape[0],), a.dtype)
        for k, f in enumerate(taps):
            if f.shape[1] == 0 or f.shape[2] == 0:
                raise ValueError(f"{a.shape[1]}×{a.shape[2]} images are too small for LPIPS-{self.net}: "
                                 f"tap {k + 1} of {len(taps)} is empty")
            f_a, f_b = jnp.split(unit_normalize(f), 2)
            weighted = nn.Conv(1, (1, 1), use_bias=False, precision=jax.lax.Precision.HIGHEST,
                               name=f"lin{k}")(jnp.square(f_a - f_b))
            total = total + jnp.mean(weighted, axis=(1, 2, 3))
        return total


@functools.cache
def _flax_shapes(net: str) -> dict[tuple[str, ...], tuple[int, ...]]:
    image = jnp.zeros((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(LpipsNet(net).init, jax.random.PRNGKey(0), image, image)
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(variables).items()}


def _torch_name(net: str, path: tuple[str, ...]) -> str:
    if len(path) == 3:  # ("params", "lin{k}", "kernel")
        return f"{path[1]}.model.1.weight"
    _, _, layer, leaf = path  # ("params", backbone, conv name, "kernel" | "bias")
    index = next(c.index for c in NETS[net] if isinstance(c, Conv) and c.name == layer)
    return f"features.{index}.{'weight' if leaf == 'kernel' else 'bias'}"


def expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """Torch name -> torch shape (OIHW) of every tensor LPIPS-`net` uses."""
    return {_torch_name(net, path): shape if len(shape) != 4 else tuple(shape[i] for i in (3, 2, 0, 1))
            for path, shape in _flax_shapes(net).items()}


def infer_net(names, source: str) -> str:
    """The net whose tensor names overlap most with `names`; loading then names every difference."""
    names = set(names)
    overlap = {net: len(names & set(expected_shapes(net))) for net in NETS}
    if not any(overlap.values()):
        raise InvalidValue(f"{source} holds none of the LPIPS tensors (features.0.weight, lin0.model.1.weight, "
                           f"...): was it written by `python -m isodiff_jax.analysis.networks.lpips convert`?")
    return max(overlap, key=overlap.get)


def params_from_state_dict(state_dict, net: str, source: str) -> dict:
    """torch-named arrays -> Flax variables of LpipsNet(net). Raises ValueError naming every
    missing, unexpected or mis-shaped key and `source` (the file they came from)."""
    torch_weights.check_keys(state_dict, expected_shapes(net), source=source,
                             what=f"an LPIPS-{net} v0.1 weight file (torchvision {BACKBONE_NAMES[net]} "
                                  f"features + lpips lin layers)")
    return torch_weights.to_flax(state_dict, _flax_shapes(net), lambda path: _torch_name(net, path))


@dataclasses.dataclass(frozen=True)
class Lpips:
    """LPIPS v0.1 with loaded weights. `distance(a, b)` is pure and jittable: PPL's distance."""
    net: str  # "alex" or "vgg"
    params: dict
    source: str

    @property
    def name(self) -> str:
        """The distance's name in metric keys: PPL reports `ppl_{name}`."""
        return f"lpips_{self.net}"

    def distance(self, a, b) -> jax.Array:
        """a, b (B, H, W, 3) in [-1, 1] -> (B,) float32 LPIPS distances."""
        if a.ndim != 4 or a.shape[-1] != 3 or a.shape != b.shape:
            raise ValueError(f"LPIPS compares two (B, H, W, 3) image batches, got shapes {a.shape} and {b.shape}")
        return LpipsNet(self.net).apply(self.params, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))


def _how_to_obtain(path: str) -> str:
    return (f"LPIPS needs torchvision's ImageNet AlexNet ({BACKBONE_URLS['alex']}) or VGG16 "
            f"({BACKBONE_URLS['vgg']}) and the lin layers lpips/weights/v0.1/{{alex,vgg}}.pth that "
            f"`pip install lpips` installs; convert them where torch is installed with `python -m "
            f"isodiff_jax.analysis.networks.lpips convert --net alex --backbone alexnet-owt-7be5be79.pth "
            f"--lin alex.pth --out {path}` (see docs/lpips.md)")


def load(path: str, net: str | None = None) -> Lpips:
    """Reads an .npz written by `convert`; `net` ("alex" / "vgg") is told from the names unless given."""
    if net is not None and net not in NETS:
        raise InvalidValue(f"net must be one of {sorted(NETS)}, got {net!r}")
    if not storage.exists(path):
        raise MissingPath(f"{path} does not exist. {_how_to_obtain(path)}")
    source = storage.absolute(path)
    state_dict = torch_weights.read_npz(path, what=f"LPIPS-{net or 'alex/vgg'} v0.1 weights",
                                        expected=expected_shapes(net or "alex"),
                                        how="`python -m isodiff_jax.analysis.networks.lpips convert` (docs/lpips.md)")
    net = net or infer_net(state_dict, source)
    params = params_from_state_dict(state_dict, net, source)
    return Lpips(net=net, params=jax.device_put(params), source=source)


def convert(net: str, backbone_path: str, lin_path: str, out_path: str) -> None:
    """torchvision backbone .pth + lpips lin .pth -> one .npz, names and layouts unchanged (the
    backbone's `classifier.*` tensors are dropped)."""
    try:
        import torch
    except ImportError:
        raise SystemExit("converting needs torch, which this project does not depend on: "
                         "`pip install torch` (the CPU build is enough), then run the command again") from None
    backbone = torch.load(storage.open_read(backbone_path), map_location="cpu", weights_only=True)
    lin = torch.load(storage.open_read(lin_path), map_location="cpu", weights_only=True)
    arrays = {k: v.numpy() for k, v in backbone.items() if k.startswith("features.")}
    arrays.update({k: v.numpy() for k, v in lin.items() if LIN_KEY.fullmatch(k)})
    params_from_state_dict(arrays, net, f"{backbone_path} + {lin_path}")  # fail here, not at first use
    buffer = io.BytesIO()  # and exactly this path: np.savez would append .npz to a bare name
    np.savez(buffer, **{k: v.astype(np.float32) for k, v in arrays.items()})
    storage.write_bytes(out_path, buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_npz = commands.add_parser("convert", help="torchvision backbone + lpips lin .pth -> .npz (needs torch)")
    to_npz.add_argument("--net", required=True, choices=sorted(NETS))
    to_npz.add_argument("--backbone", required=True, help="alexnet-owt-7be5be79.pth or vgg16-397923af.pth")
    to_npz.add_argument("--lin", required=True, help="lpips/weights/v0.1/alex.pth or vgg.pth")
    to_npz.add_argument("--out", required=True, help="the .npz to write, e.g. lpips_alex.npz")
    args = parser.parse_args(argv)
    convert(args.net, args.backbone, args.lin, args.out)
    print(f"wrote {storage.absolute(args.out)} ({len(expected_shapes(args.net))} arrays, "
          f"LPIPS-{args.net} v0.1)", file=sys.stderr)


if __name__ == "__main__":
    main()
