"""The built-in real data set "digits": scikit-learn's 1,797 handwritten digits (UCI optdigits),
8×8 scans with 17 grey levels, labelled 0-9, shipped inside scikit-learn (no file, no download).

Images are upsampled to the requested resolution with bilinear interpolation (Pillow, on the
grey levels scaled to 0-255), white strokes on black, and repeated over 3 channels so that every
model and pipeline of the project takes them unchanged. Index i is always the same scan; the
first TEST_START scans are the "train" part that a digit classifier fits, the rest are held out
(`labels` gives the digit of every index).
"""
import functools

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from isodiff_jax.data.source import check_indices

NUM_CLASSES = 10
NUM_EXAMPLES = 1797
TEST_START = 1500  # scans 1500 … 1796 are held out from the digit classifier's training


@functools.lru_cache(maxsize=1)
def _scans() -> tuple[np.ndarray, np.ndarray]:
    """(grey levels (N, 8, 8) float64 in [0, 16], labels (N,) int32), loaded once."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import
    digits = load_digits()
    return digits.images, digits.target.astype(np.int32)


@functools.lru_cache(maxsize=4)
def _resized(resolution: int) -> np.ndarray:
    """Every scan at resolution × resolution, uint8 (N, R, R), read-only."""
    grey, _ = _scans()
    scans = np.rint(grey * (255.0 / 16.0)).astype(np.uint8)
    out = np.stack([np.asarray(Image.fromarray(s).resize((resolution, resolution), Image.Resampling.BILINEAR))
                    for s in scans])
    out.setflags(write=False)
    return out


class DigitsSource:
    """scikit-learn's digits at `resolution` (images uint8 (B, R, R, 3), grey in all channels)."""

    def __init__(self, resolution: int) -> None:
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = resolution

    def __len__(self) -> int:
        return NUM_EXAMPLES

    def get(self, indices: ArrayLike) -> np.ndarray:
        """Images of `indices` (B,) -> uint8 (B, R, R, 3)."""
        grey = _resized(self.resolution)[check_indices(indices, NUM_EXAMPLES)]
        return np.repeat(grey[..., None], 3, axis=-1)

    def labels(self, indices: ArrayLike) -> np.ndarray:
        """The digit (0-9) of each of `indices` (B,) -> int32 (B,)."""
        return _scans()[1][check_indices(indices, NUM_EXAMPLES)]
