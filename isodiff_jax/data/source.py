"""What every data source offers the pipeline: a length and images by index."""
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike


class Source(Protocol):
    """A finite, indexable set of images of side `resolution`."""

    resolution: int

    def __len__(self) -> int:
        """Number of examples N; valid indices are 0 … N-1."""

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Images of `indices` (B,) -> uint8 (B, R, R, 3)."""


def check_indices(indices: ArrayLike, size: int) -> np.ndarray:
    """`indices` as a 1-D integer array, after checking every one is in [0, size)."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        bad = indices[(indices < 0) | (indices >= size)][0]
        raise IndexError(f"index {bad} out of range for a source of {size} examples")
    return indices.astype(np.int64)
