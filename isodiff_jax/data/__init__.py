"""Input pipelines: the synthetic "shapes" set, the built-in real "digits", image folders and TFDS data sets.

`make_source` turns a data-set name into a source (`len(source)`, `source.get(indices)` ->
uint8 (B, R, R, 3)); `pipeline.load_batch` and `pipeline.prefetch_batches` turn a source into
float32 batches in [-1, 1] that are pure functions of (seed, step).

A config names its data set with `data.name`: "shapes", "digits" (scikit-learn's 8×8 scans,
upsampled), "folder" (the images under `data_dir`),
or any TFDS name such as "cifar10", "celeb_a_hq/256" or "lsun/church_outdoor" (prepared under
`data_dir`). `DATASETS` lists these kinds; `source_kind(name)` says which one a name is.
"""
import os

from isodiff_jax.data.digits import DigitsSource
from isodiff_jax.data.folder import FolderSource
from isodiff_jax.data.shapes import DEFAULT_SIZE, ShapesSource
from isodiff_jax.data.source import Source

DATASETS = ("shapes", "digits", "folder", "tfds")  # "tfds" stands for any other name: a TFDS data set
BUILT_IN = ("shapes", "digits")  # need no files


def source_kind(name: str) -> str:
    """Which of DATASETS the data-set `name` is."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"data set name must be a non-empty string, got {name!r}")
    if name == "tfds":
        raise ValueError('"tfds" is a kind, not a name: give the TFDS name, e.g. "cifar10"')
    return name if name in BUILT_IN + ("folder",) else "tfds"


def make_source(name: str, *, resolution: int, seed: int, data_dir: str | os.PathLike | None = None,
                split: str = "train", size: int | None = None) -> Source:
    """The data source called `name`, its images fitted to `resolution` × `resolution`.

    Args:
      name: "shapes", "digits", "folder" or a TFDS name ("cifar10", "celeb_a_hq/256", ...).
      resolution: side R of the square images the source returns.
      seed: seed of the synthetic "shapes" images (stored data sets have fixed content).
      data_dir: the image folder for "folder"; the TFDS data_dir for TFDS names (required:
        nothing is downloaded); must be None for the built-in "shapes" and "digits".
      split: the TFDS split, e.g. "train" or "train[:90%]"; TFDS names only.
      size: examples per epoch of "shapes" (default DEFAULT_SIZE); "shapes" only.
    """
    kind = source_kind(name)
    if kind != "tfds" and split != "train":
        raise ValueError(f"split={split!r} is for TFDS data sets; {name!r} has one split")
    if kind in BUILT_IN and data_dir is not None:
        raise ValueError(f'data set "{name}" is built in, but data_dir={data_dir!r} is set')
    if kind == "shapes":
        return ShapesSource(resolution, seed, size=DEFAULT_SIZE if size is None else size)
    if size is not None:
        raise ValueError(f"size is for the synthetic data set only; {name!r} has a fixed size")
    if kind == "digits":
        return DigitsSource(resolution)
    if not data_dir:
        what = "the image folder" if kind == "folder" else "the TFDS data_dir it is prepared in"
        raise ValueError(f"data set {name!r} needs data_dir: {what}")
    if kind == "folder":
        return FolderSource(data_dir, resolution=resolution)
    # Imported only here: TFDS takes ~0.4 s to import, which shapes and folders do not need.
    from isodiff_jax.data import tfds_source
    return tfds_source.TfdsSource(name, resolution=resolution, data_dir=data_dir, split=split)
