"""Ground-truth factors along interpolations (shapes data set): factor-RTL.

Every factor's change is put on one scale, [0, 1] per unit of "everything changed":

    shape              1 when the predicted shape differs, else 0
    object/background  circular hue distance × 2 (opposite hues are 1 apart)
    scale, x, y        |Δ| / the factor's range in `shapes.FACTOR_RANGES`

factor-RTL of a continuous factor along K+1 frames decoded from slerp(x_0, x_1) in x_T is

    Σ_k change(f_k, f_{k+1}) / change(f_0, f_K)     (≥ 1; 1 = the factor moves monotonically)

taken only over pairs whose ends differ by at least `min_change` (a ratio over a vanishing end
difference says nothing). For the shape, the number of changes beyond the minimum (0 when the end
shapes agree, 1 when they differ) is counted instead.
"""
from typing import Callable, Sequence

import jax
import numpy as np

from isodiff_jax.analysis.evaluator import Evaluator, Measured
from isodiff_jax.analysis.measures import rtl
from isodiff_jax.data import shapes

CONTINUOUS = ("object_hue", "background_hue", "scale", "x", "y")
HUES = ("object_hue", "background_hue")


def change(name: str, a, b) -> np.ndarray:
    """The change of factor `name` between predicted values a and b, on the common [0, 1] scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if name == "shape":
        return (a != b).astype(np.float64)
    if name in HUES:
        return 2.0 * np.abs(np.mod(a - b + 0.5, 1.0) - 0.5)
    low, high = shapes.FACTOR_RANGES[name]
    return np.abs(a - b) / (high - low)


def changes(a: dict, b: dict) -> dict:
    """change() of every factor in `shapes.FACTORS` between two factor dicts of (B,) arrays."""
    return {name: change(name, a[name], b[name]) for name in shapes.FACTORS}


def path_factor_rtl(path: dict, *, min_change: float = 0.1) -> dict:
    """factor-RTL per pair for factors along paths: path {name: (K+1, B)} -> {name: (B,)}.

    Continuous factors give the ratio (NaN where the ends differ by less than min_change);
    "shape_extra_changes" gives the shape changes beyond the minimum."""
    out = {}
    for name in CONTINUOUS:
        values = np.asarray(path[name])
        total = change(name, values[1:], values[:-1]).sum(axis=0)
        chord = change(name, values[-1], values[0])
        out[name] = np.where(chord >= min_change, total / np.maximum(chord, min_change), np.nan)
    shape = np.asarray(path["shape"])
    out["shape_extra_changes"] = ((shape[1:] != shape[:-1]).sum(axis=0) - (shape[-1] != shape[0])).astype(float)
    return out


def value_names() -> tuple[str, ...]:
    """The values `FactorRtl` measures."""
    per_factor = tuple(f"factor_rtl_{name}{end}" for name in CONTINUOUS for end in ("", "_pairs"))
    return (*per_factor, "factor_rtl_shape_extra_changes", "factor_rtl")


class FactorRtl(Evaluator):
    """Evaluator: decode `num_frames` frames along slerp between pairs x_0, x_1 ~ N(0, I) with
    sample(params, x_T) -> images in [-1, 1], read their factors with `oracle`, and measure
    "factor_rtl_<factor>" (mean over the pairs that qualify), "factor_rtl_<factor>_pairs" (how
    many qualified), "factor_rtl_shape_extra_changes" (mean) and "factor_rtl" (the mean of the
    continuous factors' values). Built once; `run(params)` compiles nothing for new parameters."""

    def __init__(self, sample: Callable, oracle, *, image_shape: Sequence[int], num_pairs: int = 32,
                 num_frames: int = 17, batch_size: int = 8, min_change: float = 0.1, seed: int = 0):
        self.oracle, self.image_shape, self.num_pairs = oracle, tuple(image_shape), num_pairs
        self.num_frames, self.batch_size, self.min_change = num_frames, batch_size, min_change
        self.key = jax.random.PRNGKey(seed)
        self._decode = jax.jit(lambda params, x0, x1: sample(
            params, rtl.slerp_path(x0, x1, num_frames - 1).reshape(-1, *x0.shape[1:])))

    def _per_pair(self, params) -> dict:
        per_pair = {}
        for start in range(0, self.num_pairs, self.batch_size):
            b = min(self.batch_size, self.num_pairs - start)
            k0, k1 = jax.random.split(jax.random.fold_in(self.key, start))
            x0, x1 = (np.asarray(jax.random.normal(k, (b, *self.image_shape))) for k in (k0, k1))
            predicted = self.oracle.predict(np.asarray(self._decode(params, x0, x1)))
            path = {name: v.reshape(self.num_frames, b) for name, v in predicted.items()}
            for name, values in path_factor_rtl(path, min_change=self.min_change).items():
                per_pair.setdefault(name, []).append(values)
        return {name: np.concatenate(v) for name, v in per_pair.items()}

    def measure(self, params) -> Measured:
        per_pair, values = self._per_pair(params), {}
        for name in CONTINUOUS:
            qualified = per_pair[name][~np.isnan(per_pair[name])]
            values[f"factor_rtl_{name}"] = float(qualified.mean()) if len(qualified) else float("nan")
            values[f"factor_rtl_{name}_pairs"] = float(len(qualified))
        values["factor_rtl_shape_extra_changes"] = float(per_pair["shape_extra_changes"].mean())
        values["factor_rtl"] = float(np.nanmean([values[f"factor_rtl_{name}"] for name in CONTINUOUS]))
        return Measured(values)
