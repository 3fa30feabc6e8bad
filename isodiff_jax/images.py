"""Image grids as PNG files (what a person looks at during training and analysis)."""
import io
import math

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from isodiff_jax import storage


def to_uint8(x: ArrayLike) -> np.ndarray:
    """Images in [-1, 1] (any float array, (..., H, W, C)) -> uint8 in [0, 255]."""
    x = np.asarray(x, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: ArrayLike, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows·(H+pad)+pad, columns·(W+pad)+pad, C) uint8 image, white gaps."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, C) uint8 images, got {images.shape} {images.dtype}")
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = image
    return out


def save_grid(path: str, images: ArrayLike, columns: int | None = None, scale: int = 1) -> str:
    """Writes images ((N, H, W, C) uint8, or float in [-1, 1]) as one PNG grid, enlarged `scale`
    times with nearest-neighbour so small images stay crisp. Written atomically; returns path."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    picture = Image.fromarray(grid(images, columns).squeeze())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return save_png(path, picture)


def save_png(path: str, picture: Image.Image) -> str:
    """Writes a PIL image as a PNG file (a local path or a bucket URL), atomically; returns path."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue())
    return path
