"""A folder of PNG/JPEG images as a data set, and the resize helper every stored source uses.

Files are found recursively and sorted by path, so index i is the same file on every host and
run. Each image is converted to RGB, its centred square (side = the shorter side) is cut out and
resampled to R × R with a Lanczos filter in one step, which equals resizing the shorter side to
R and centre-cropping without a second resampling. A file that cannot be decoded raises
`UnreadableImageError` naming it: a training run must never see silent zeros.
"""
import os
import pathlib

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from isodiff_jax.data.source import check_indices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow first shrinks by an integer factor (cheap box filter) while the image stays at least
# this many times larger than the target, then applies Lanczos: fast on large photos, and the
# result is indistinguishable from Lanczos alone.
_REDUCING_GAP = 3.0


class UnreadableImageError(OSError):
    """An image file could not be decoded; `path` names the file."""

    def __init__(self, path: str | os.PathLike, reason: object) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path


def fit_to_resolution(image: Image.Image | np.ndarray, resolution: int) -> np.ndarray:
    """Centre square crop resampled to R × R: PIL image or array (H, W[, C]) -> uint8 (R, R, 3)."""
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        image = Image.fromarray(image)
    image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (resolution, resolution):
        side = min(width, height)
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box,
                             reducing_gap=_REDUCING_GAP)
    return np.asarray(image, np.uint8)


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Decodes the image at `path` -> uint8 (R, R, 3); `UnreadableImageError` if it cannot."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, inside the try: Image.open only reads the header
            return fit_to_resolution(image, resolution)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, error) from error


def list_images(root: str | os.PathLike) -> list[pathlib.Path]:
    """Sorted paths of the PNG/JPEG files under `root`, searched recursively."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    paths = sorted(
        pathlib.Path(directory) / name
        for directory, _, names in os.walk(root, followlinks=True)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not paths:
        raise FileNotFoundError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return paths


class FolderSource:
    """The images under `root` at `resolution`; the file list is read once, at construction."""

    def __init__(self, root: str | os.PathLike, *, resolution: int) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.root, self.resolution = pathlib.Path(root), resolution
        self.paths = list_images(root)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: ArrayLike) -> np.ndarray:
        """Images of `indices` (B,) -> uint8 (B, R, R, 3)."""
        indices = check_indices(indices, len(self))
        images = np.empty((len(indices), self.resolution, self.resolution, 3), np.uint8)
        for row, index in enumerate(indices):
            images[row] = load_image(self.paths[index], self.resolution)
        return images
