"""diffusers state dicts <-> Flax parameters of `UNet` and `VQAutoencoder`.

The U-Net's parameter tree is named after diffusers' modules, so each Flax leaf has one diffusers
name: ('down_blocks_0', 'resnets_1', 'conv1', 'kernel') is 'down_blocks.0.resnets.1.conv1.weight',
'downsampler' is 'downsamplers.0', 'to_out' is 'to_out.0'. Layouts: a convolution kernel is
(kh, kw, in, out) here and (out, in, kh, kw) in torch; a dense kernel (in, out) here, (out, in) there;
a VQ codebook ('quantize', 'embedding': 'quantize.embedding.weight') is (entries, dim) in both.
Checkpoints written by diffusers before 0.15 (the google/ddpm-* ones) name the attention
projections query, key, value and proj_attn; both spellings are read.
"""
import re

import numpy as np
from flax import traverse_util

from isodiff_jax.errors import InvalidValue

LISTS = ("down_blocks", "up_blocks", "resnets", "attentions")  # Flax 'resnets_1' is torch 'resnets.1'
RENAMES = {"downsampler": "downsamplers.0", "upsampler": "upsamplers.0", "to_out": "to_out.0"}
LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "embedding.weight"}
SAME_LAYOUT = ("embedding",)  # leaves stored as torch stores them
OLD_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
SHOWN = 8  # names listed in an error before "... (N in all)"


def diffusers_name(path: tuple[str, ...]) -> str:
    """A Flax parameter path (without the 'params' collection) -> its diffusers state-dict name."""
    parts = []
    for part in path[:-1]:
        match = re.fullmatch(r"(\w+?)_(\d+)", part)
        if match and match.group(1) in LISTS:
            parts.append(f"{match.group(1)}.{match.group(2)}")
        else:
            parts.append(RENAMES.get(part, part))
    return ".".join(parts + [LEAVES[path[-1]]])


def old_name(name: str) -> str:
    """The pre-0.15 diffusers name of an attention projection (the name itself otherwise)."""
    prefix, _, rest = name.partition(".attentions.")
    if not rest:
        return name
    index, _, tail = rest.partition(".")
    for new, old in OLD_ATTENTION.items():
        if tail.startswith(new + "."):
            return f"{prefix}.attentions.{index}.{old}{tail[len(new):]}"
    return name


def _from_torch(array: np.ndarray, ndim: int) -> np.ndarray:
    if array.ndim == 4 and ndim == 2 and array.shape[2:] == (1, 1):  # a 1×1 convolution as a dense layer
        array = array[:, :, 0, 0]
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T if array.ndim == 2 else array


def _to_torch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array.T if array.ndim == 2 else array


def _torch_shape(shape: tuple) -> tuple:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1]


def _names(names) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN])
    return shown if len(names) <= SHOWN else f"{shown}, ... ({len(names)} in all)"


def params_from_state_dict(state_dict: dict, abstract_params: dict, source: str, model: str = "U-Net") -> dict:
    """diffusers state dict (name -> array) -> Flax variables {'params': ...} with the structure,
    shapes and (float32) dtypes of `abstract_params` (from `jax.eval_shape(unet.init, ...)`).
    InvalidValue naming `source` and every missing, unexpected or mis-shaped weight."""
    flat = traverse_util.flatten_dict(abstract_params["params"])
    out, missing, wrong, used = {}, [], [], set()
    for path, leaf in flat.items():
        name = diffusers_name(path)
        key = name if name in state_dict else old_name(name)
        if key not in state_dict:
            missing.append(name)
            continue
        used.add(key)
        array = np.asarray(state_dict[key])
        array = array if path[-1] in SAME_LAYOUT else _from_torch(array, len(leaf.shape))
        if array.shape != tuple(leaf.shape):
            expected = tuple(leaf.shape) if path[-1] in SAME_LAYOUT else _torch_shape(tuple(leaf.shape))
            wrong.append(f"{key} has shape {tuple(np.shape(state_dict[key]))}, expected {expected}")
            continue
        out[path] = array.astype(leaf.dtype)
    problems = []
    if missing:
        problems.append(f"missing weights: {_names(missing)}")
    if extra := sorted(set(state_dict) - used):
        problems.append(f"unexpected weights (not in this model): {_names(extra)}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:SHOWN]) + (f"; ... ({len(wrong)} in all)"
                                                                         if len(wrong) > SHOWN else ""))
    if problems:
        raise InvalidValue(f"{source} does not hold the weights of the {model} its config.json describes: "
                           + "; ".join(problems))
    return {"params": traverse_util.unflatten_dict(out)}


def state_dict_from_params(params: dict) -> dict[str, np.ndarray]:
    """Flax variables {'params': ...} -> diffusers state dict, float32, torch layouts."""
    flat = traverse_util.flatten_dict(params["params"])
    layout = lambda path, a: a if path[-1] in SAME_LAYOUT else _to_torch(a)
    return {diffusers_name(path): np.ascontiguousarray(layout(path, np.asarray(leaf, np.float32)))
            for path, leaf in flat.items()}
