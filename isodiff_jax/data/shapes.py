"""The built-in synthetic data set "shapes": one object on a uniform background.

Each image shows a circle, square or triangle with known ground-truth factors, so an analysis
can relate the latent space to them and render images from edited factors:

    shape            int, 0 circle, 1 square, 2 triangle (SHAPE_NAMES)
    object_hue       hue of the object, in [0, 1)
    background_hue   hue of the background, in [0, 1)
    scale            object size as a fraction of the image side (circle diameter, square side,
                     triangle side; the triangle is equilateral and points up)
    x, y             centre of the object's bounding box in image coordinates: x to the right,
                     y downwards, (0, 0) the top-left corner and (1, 1) the bottom-right one

Object and background stay distinguishable for every sample: the background hue is the object
hue shifted by a uniform amount in [MIN_HUE_GAP, 1 - MIN_HUE_GAP] around the colour wheel
(circular hue distance >= MIN_HUE_GAP), and the object is also brighter and more saturated than
the background (OBJECT_HSV vs BACKGROUND_HSV). Positions leave the largest object a margin of
0.05 inside the image.

Examples are a pure function of (seed, index): a counter-based hash turns (seed, index, factor)
into uniform numbers, so an index gives the same image in every batch, order or process, and
nothing is stored. Rendering is vectorised over the batch and anti-aliased analytically: a pixel
of side 1/R at signed distance sd from the object's edge is covered by clip(0.5 - sd R, 0, 1).
"""
import types
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike

from isodiff_jax.data.source import check_indices

Factors = Mapping[str, ArrayLike]  # FACTORS name -> (B,) values

FACTORS = ("shape", "object_hue", "background_hue", "scale", "x", "y")
SHAPE_NAMES = ("circle", "square", "triangle")
FACTOR_RANGES = types.MappingProxyType({  # [low, high) of each continuous factor
    "object_hue": (0.0, 1.0),
    "background_hue": (0.0, 1.0),
    "scale": (0.25, 0.5),
    "x": (0.3, 0.7),
    "y": (0.3, 0.7),
})
MIN_HUE_GAP = 0.25  # circular distance between object and background hue
OBJECT_HSV = (0.85, 0.95)  # (saturation, value) of objects
BACKGROUND_HSV = (0.5, 0.4)  # (saturation, value) of backgrounds: darker and greyer
DEFAULT_SIZE = 50_000  # examples per epoch of a ShapesSource, as many as CIFAR-10's train split

_SQRT3 = np.sqrt(3.0)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scrambles every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, indices: np.ndarray, count: int) -> np.ndarray:
    """Uniform numbers in [0, 1) that depend only on (seed, index, column): (B,) -> (B, count)."""
    state = _mix64(np.full(len(indices), seed, np.uint64)) + np.asarray(indices, np.uint64)
    state = _mix64(state)[:, None] + np.arange(1, count + 1, dtype=np.uint64)
    return (_mix64(state) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_factors(seed: int, indices: ArrayLike) -> dict[str, np.ndarray]:
    """Ground-truth factors of examples `indices` (B,): dict of (B,) arrays keyed by FACTORS.

    `shape` is int32, the rest float64. A pure function of (seed, index).
    """
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    u = _uniforms(seed, check_indices(indices, np.iinfo(np.int64).max), len(FACTORS))
    low = lambda name: FACTOR_RANGES[name][0]
    width = lambda name: FACTOR_RANGES[name][1] - FACTOR_RANGES[name][0]
    object_hue = u[:, 1]
    hue_shift = MIN_HUE_GAP + (1.0 - 2.0 * MIN_HUE_GAP) * u[:, 2]
    return {
        "shape": np.floor(u[:, 0] * len(SHAPE_NAMES)).astype(np.int32),
        "object_hue": object_hue,
        "background_hue": np.mod(object_hue + hue_shift, 1.0),
        "scale": low("scale") + width("scale") * u[:, 3],
        "x": low("x") + width("x") * u[:, 4],
        "y": low("y") + width("y") * u[:, 5],
    }


def hsv_to_rgb(hue: ArrayLike, saturation: float, value: float) -> np.ndarray:
    """HSV to RGB, all in [0, 1]: hue (B,), scalar saturation and value -> (B, 3)."""
    hue = np.mod(np.asarray(hue, np.float64), 1.0)[:, None]
    # Each channel is a clipped triangle wave of the hue, peaking at red 0, green 1/3, blue 2/3.
    k = np.mod(6.0 * hue + np.array([5.0, 3.0, 1.0]), 6.0)
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return value * (1.0 - saturation * ramp)


def colours(factors: Factors) -> tuple[np.ndarray, np.ndarray]:
    """(object_rgb, background_rgb), each (B, 3) in [0, 1], of factors with B examples."""
    return (hsv_to_rgb(factors["object_hue"], *OBJECT_HSV),
            hsv_to_rgb(factors["background_hue"], *BACKGROUND_HSV))


def _circle(dx: np.ndarray, dy: np.ndarray, half: np.ndarray) -> np.ndarray:
    return np.sqrt(dx * dx + dy * dy) - half


def _square(dx: np.ndarray, dy: np.ndarray, half: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(dx), np.abs(dy)) - half


def _triangle(dx: np.ndarray, dy: np.ndarray, half: np.ndarray) -> np.ndarray:
    half_height = half * (_SQRT3 / 2)
    below_apex = dy + half_height
    sides = (_SQRT3 / 2) * np.abs(dx) - 0.5 * below_apex  # distance to the two slanted edges
    return np.maximum(sides, dy - half_height)


_DISTANCES = (_circle, _square, _triangle)  # in SHAPE_NAMES order


def signed_distance(factors: Factors, resolution: int) -> np.ndarray:
    """Signed distance (negative inside) from each pixel centre to the object edge: (B, R, R).

    In image units. Polygons use the largest distance to their edge lines, exact inside and
    near edges, which is all the anti-aliasing reads.
    """
    centres = ((np.arange(resolution) + 0.5) / resolution).astype(np.float32)
    column = lambda name: np.asarray(factors[name], np.float32)[:, None, None]
    dx = centres[None, None, :] - column("x")  # (B, 1, R)
    dy = centres[None, :, None] - column("y")  # (B, R, 1)
    half = column("scale") / 2
    shape = np.asarray(factors["shape"])
    distance = np.empty((len(shape), resolution, resolution), np.float32)
    for kind, distance_fn in enumerate(_DISTANCES):
        rows = np.flatnonzero(shape == kind)
        distance[rows] = distance_fn(dx[rows], dy[rows], half[rows])
    return distance


def render(factors: Factors, resolution: int) -> np.ndarray:
    """Images of factors (dict of (B,) arrays, see FACTORS) -> uint8 (B, R, R, 3), R = resolution.

    A pure function of the factors, so edited factors can be rendered too.
    """
    shape = np.asarray(factors["shape"])
    if shape.size and (shape.min() < 0 or shape.max() >= len(SHAPE_NAMES)):
        raise ValueError(f"shape must be in [0, {len(SHAPE_NAMES)}), got {np.unique(shape)}")
    coverage = np.clip(0.5 - signed_distance(factors, resolution) * resolution, 0.0, 1.0)
    obj, background = (255.0 * c.astype(np.float32)[:, None, None, :] for c in colours(factors))
    image = coverage[..., None] * (obj - background)
    image += background + 0.5  # +0.5 so the truncating cast rounds to nearest
    return image.astype(np.uint8)


class ShapesSource:
    """`size` examples of "shapes" at `resolution`, generated on the fly from `seed`."""

    def __init__(self, resolution: int, seed: int, size: int = DEFAULT_SIZE) -> None:
        if resolution < 1 or size < 1:
            raise ValueError(f"resolution and size must be >= 1, got {resolution}, {size}")
        self.resolution, self.seed, self.size = resolution, seed, size

    def __len__(self) -> int:
        return self.size

    def factors(self, indices: ArrayLike) -> dict[str, np.ndarray]:
        """Ground-truth factors of `indices` (B,): dict of (B,) arrays keyed by FACTORS."""
        return sample_factors(self.seed, check_indices(indices, self.size))

    def get(self, indices: ArrayLike) -> np.ndarray:
        """Images of `indices` (B,) -> uint8 (B, R, R, 3)."""
        return render(self.factors(indices), self.resolution)
