"""A folder of PNG/JPEG images as a data set, and the resize helper every stored source uses.

Files are found recursively and sorted by path, so index i is the same file on every host and
run. Each image is converted to RGB as it looks (below), its centred square (side = the shorter
side) is cut out and resampled to R × R with a Lanczos filter in one step, which equals resizing
the shorter side to R and centre-cropping without a second resampling.

Pixels are read as they look, never clipped:
- 8-bit modes (1, L, P, RGB, CMYK, YCbCr) take Pillow's conversion to RGB (CMYK without its
  colour profile). Pillow itself decodes 16-bit colour PNGs to 8 bits (their high byte).
- Wide grey modes are scaled at a fixed range, never per image, so a dark image stays dark:
  16-bit (I;16, I;16B, I;16L) by round(v · 255 / 65535) = round(v / 257), not by a shift
  (`v >> 8` floors, and rounding a shift would carry 65535 past 255); I (32-bit integers,
  what older Pillow versions made of 16-bit grey PNGs) as 16-bit, values outside 0..65535
  refused; F (floats, e.g. from TIFF) as [0, 1] × 255 rounded half up, values outside [0, 1]
  refused: their range cannot be known, and a guess would clip or darken.
- Transparency (an alpha band, or a "transparency" entry of a palette, grey or RGB image) is
  composited over white: round((c·a + 255·(255 − a)) / 255). White, because images with
  transparency (logos, icons, cut-out objects) are made to be seen on a light page, where dark
  outlines stay visible; a plain RGB conversion would show the hidden colour of transparent
  pixels instead.
Arrays (TFDS features, notebooks) follow the same rules: uint8, bool, uint16 as 16-bit, floats
in [0, 1]; 1 to 4 channels (grey, grey + alpha, RGB, RGBA). Anything else raises
`UnsupportedImageError`.

A folder is checked when its source is built, before any compile: every file's header must
parse (Pillow reads only the header) in a supported mode, and a PNG must end with its IEND
chunk (one small read at the end of the file, which finds truncated copies). JPEGs are not
checked at their end, since phones append data after the end marker (motion photos); a damaged
JPEG is found when it is decoded. Either way `UnreadableImageError` names the file: a training
run must never see silent zeros.
"""
import os
import pathlib

import numpy as np
import tqdm
from numpy.typing import ArrayLike
from PIL import Image

from isodiff_jax import storage
from isodiff_jax.data.source import check_indices
from isodiff_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow first shrinks by an integer factor (cheap box filter) while the image stays at least
# this many times larger than the target, then applies Lanczos: fast on large photos, and the
# result is indistinguishable from Lanczos alone.
_REDUCING_GAP = 3.0
BACKGROUND = 255  # transparent pixels show this grey level (white): see the module docstring
_COLOUR_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
PROGRESS_MIN_FILES = 2000  # folders larger than this show a progress bar while checked
_PNG_TAIL = 1024  # bytes at a PNG's end searched for IEND; tolerates a little trailing data


class UnsupportedImageError(UserError, ValueError):
    """An image whose mode, dtype, shape or value range has no defined look (see above)."""


class ImageFolderNotFoundError(UserError, FileNotFoundError):
    """The image folder is missing, or holds no image files."""


class UnreadableImageError(UserError, OSError):
    """An image file could not be decoded; `path` names the file."""

    def __init__(self, path: str | os.PathLike, reason: object) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # rebuilt from (path, reason) when a loading process sends it back
        return type(self), (self.path, str(self.reason))


def _wide_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integers in 0..65535 or floats in [0, 1], any shape -> uint8 at a fixed scale."""
    if values.dtype.kind == "f":
        if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
            raise UnsupportedImageError(
                f"float pixels must lie in [0, 1], got [{np.min(values)}, {np.max(values)}]")
        return np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    if not ((values >= 0).all() and (values <= 65535).all()):
        raise UnsupportedImageError(f"wide integer pixels must lie in 0..65535 (16 bits), "
                                    f"got {values.min()}..{values.max()}")
    # 257 is odd, so v / 257 never ends in .5 and the floor below rounds exactly.
    return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)


def _array_to_image(array: np.ndarray) -> Image.Image:
    """Array (H, W[, C]) with C in 1..4 -> an 8-bit PIL image (L, LA, RGB or RGBA)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (2, 3, 4))):
        raise UnsupportedImageError(f"image arrays are (H, W) or (H, W, C) with 1 to 4 channels, "
                                    f"got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f" or (array.dtype.kind == "u" and array.dtype.itemsize == 2):
        array = _wide_to_uint8(array)
    elif array.dtype != np.uint8:
        raise UnsupportedImageError(f"image arrays are uint8, uint16, bool or floats in [0, 1], "
                                    f"got {array.dtype}")
    return Image.fromarray(array)


def _composite(rgba: np.ndarray) -> np.ndarray:
    """uint8 (..., 4) -> uint8 (..., 3): the colour over BACKGROUND, rounded to the nearest."""
    colour, alpha = rgba[..., :3].astype(np.int32), rgba[..., 3:].astype(np.int32)
    # (n + 127) // 255 == round(n / 255): 255 is odd, so no n / 255 ends in .5.
    return ((colour * alpha + BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image of any supported mode -> RGB, as it looks (see the module docstring)."""
    if image.mode in _WIDE_MODES:
        raw = np.asarray(image)
        grey = _wide_to_uint8(raw)
        if "transparency" in image.info:  # a 16-bit grey level that stands for transparent
            alpha = np.where(raw == image.info["transparency"], 0, 255).astype(np.uint8)
            grey = np.stack([grey, alpha], axis=-1)
        image = Image.fromarray(grey)
    if image.mode not in _COLOUR_MODES + _ALPHA_MODES:
        raise UnsupportedImageError(f"image mode {image.mode!r} is not supported")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return Image.fromarray(_composite(np.asarray(image.convert("RGBA"))))
    return image.convert("RGB")


def fit_to_resolution(image: Image.Image | np.ndarray, resolution: int) -> np.ndarray:
    """Centre square crop resampled to R × R: PIL image or array (H, W[, C]) -> uint8 (R, R, 3).

    Pixels are read as they look (module docstring); `UnsupportedImageError` for an image whose
    look is not defined, such as floats outside [0, 1].
    """
    if isinstance(image, np.ndarray):
        image = _array_to_image(image)
    image = to_rgb(image)
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
        with storage.open_read(path) as file, Image.open(file) as image:
            image.load()  # decode now, inside the try: Image.open only reads the header
            return fit_to_resolution(image, resolution)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, error) from error


def list_images(root: str | os.PathLike) -> list:
    """Sorted paths of the PNG/JPEG files under `root`, searched recursively: pathlib paths
    in a local folder, URLs in a bucket."""
    if not storage.is_dir(root):
        raise ImageFolderNotFoundError(f"image folder {root} does not exist or is not a directory")
    local = not storage.is_url(root)
    paths = [pathlib.Path(p) if local else p for p in storage.walk_files(root)
             if p.lower().endswith(IMAGE_SUFFIXES)]
    if not paths:
        raise ImageFolderNotFoundError(
            f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return paths


def _file_problem(path: pathlib.Path) -> str | None:
    """Why the file at `path` cannot be decoded, judged from its header and (PNG) its last
    bytes without decoding; None when it looks sound."""
    try:
        with storage.open_read(path) as file, Image.open(file) as image:
            if image.mode not in _COLOUR_MODES + _ALPHA_MODES + _WIDE_MODES:
                return f"image mode {image.mode!r} is not supported"
            if image.format == "PNG":
                file.seek(max(0, file.seek(0, os.SEEK_END) - _PNG_TAIL))
                if b"IEND" not in file.read():
                    return "the PNG ends before its IEND chunk (a truncated file?)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None


def check_images(paths: list[pathlib.Path]) -> None:
    """Checks every file cheaply (module docstring); `UnreadableImageError` naming the first
    file that fails, and how many do. A progress bar shows above PROGRESS_MIN_FILES files."""
    bar = tqdm.tqdm(paths, desc=f"checking {len(paths)} images", unit="file",
                    disable=len(paths) <= PROGRESS_MIN_FILES, dynamic_ncols=True)
    problems = [(path, problem) for path in bar if (problem := _file_problem(path)) is not None]
    if problems:
        path, problem = problems[0]
        raise UnreadableImageError(
            path, f"{problem} ({len(problems)} of {len(paths)} files fail the check)")


class FolderSource:
    """The images under `root` at `resolution`. The file list is read and every file checked
    once, at construction, so a bad file stops a run before it compiles anything."""

    def __init__(self, root: str | os.PathLike, *, resolution: int) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.root, self.resolution = root if storage.is_url(root) else pathlib.Path(root), resolution
        self.paths = list_images(root)
        check_images(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: ArrayLike) -> np.ndarray:
        """Images of `indices` (B,) -> uint8 (B, R, R, 3)."""
        indices = check_indices(indices, len(self))
        images = np.empty((len(indices), self.resolution, self.resolution, 3), np.uint8)
        for row, index in enumerate(indices):
            images[row] = load_image(self.paths[index], self.resolution)
        return images
