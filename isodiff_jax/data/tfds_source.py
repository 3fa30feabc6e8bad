"""TensorFlow Datasets data sets (cifar10, celeb_a_hq/256, lsun/church_outdoor, ...) by index.

Reads through `tfds.data_source`: random access into ArrayRecord files, decoded with NumPy and
PIL, so TensorFlow is not needed. Nothing is ever downloaded here (training hosts may have no
internet): the data set must already be prepared, in the ArrayRecord format, under an explicit
`data_dir`. When it is not, `DataNotPreparedError` says where it looked and how to prepare it.

A `data_dir` in a bucket (`gs://…`): TFDS reads the data set's metadata from there, but its
ArrayRecord reader opens files through its own C++ layer, which hangs on an emulated bucket and
would read a real one record by record over the network. So the prepared files of the one data
set asked for are copied once to a local cache (`~/.cache/isodiff_jax/tfds/<bucket>/<path>`,
or `$ISODIFF_CACHE/tfds/…`), checked by size on every start, and read from there: each host
keeps its own copy on its local disk.
"""
import os
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
import tensorflow_datasets as tfds

from isodiff_jax import storage
from isodiff_jax.data.folder import fit_to_resolution
from isodiff_jax.data.source import check_indices

# Formats with random access; `tfds build` writes TFRecord unless told otherwise.
_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


class DataNotPreparedError(FileNotFoundError):
    """The TFDS data set is not prepared (in a random-access format) under the data_dir."""


def _preparation_hint(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> str:
    command = f"tfds build {name} --data_dir=DIR --file_format=array_record"
    relative = os.path.relpath(builder.data_path, data_dir)
    hint = (f"Prepare it on a machine with internet access with\n    {command}\n"
            f"then copy DIR/{relative} to {builder.data_path}.")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        hint += (f"\n{name} needs a manual download first: put its files in "
                 f"{data_dir}/downloads/manual (or pass --manual_dir). TFDS says:\n"
                 f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
    return hint


def _not_prepared_error(name: str, split: str, data_dir: str) -> DataNotPreparedError | None:
    """The error that explains why `tfds.data_source` failed, or None if the data looks fine."""
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        return DataNotPreparedError(
            f"TFDS data set {name!r} (split {split!r}) is not prepared under data_dir "
            f"{data_dir}: no {builder.data_path}/dataset_info.json.\n"
            + _preparation_hint(builder, name, data_dir))
    file_format = builder.info.file_format
    if file_format is None or file_format.value not in _RANDOM_ACCESS_FORMATS:
        return DataNotPreparedError(
            f"TFDS data set {name!r} at {builder.data_path} is stored as {file_format}, which "
            f"has no random access; it must be one of {_RANDOM_ACCESS_FORMATS}.\n"
            + _preparation_hint(builder, name, data_dir))
    return None


def open_data_source(name: str, *, split: str, data_dir: str) -> Sequence[Mapping[str, Any]]:
    """`tfds.data_source` without downloading; explains a missing or unusable data set."""
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"{name!r} is neither a registered TFDS data set nor prepared under "
                         f"data_dir {data_dir}") from error
    except Exception as error:
        # TFDS reports a missing data set as a file-format or split error; find the real cause.
        explained = _not_prepared_error(name, split, data_dir)
        if explained is None:
            raise
        raise explained from error


def cache_root() -> str:
    return os.path.join(os.environ.get("ISODIFF_CACHE") or os.path.expanduser("~/.cache/isodiff_jax"), "tfds")


def local_copy(name: str, data_dir: str) -> str:
    """The data set `name` prepared under the bucket folder `data_dir`, copied (once; files of
    another size again) into a local data_dir of the same layout -> that local data_dir."""
    if not storage.is_dir(data_dir):
        raise DataNotPreparedError(f"TFDS data_dir {data_dir} does not exist")
    local = os.path.join(cache_root(), data_dir.split("://", 1)[1].strip("/"))
    remote = tfds.builder(name, data_dir=data_dir).data_path  # <data_dir>/<name>/<config>/<version>
    files = storage.walk_files(remote)
    if not files:
        raise DataNotPreparedError(f"TFDS data set {name!r} is not prepared under data_dir {data_dir}: "
                                   f"nothing in {remote}")
    for path in files:
        target = os.path.join(local, os.path.relpath(str(path).split("://", 1)[1], data_dir.split("://", 1)[1]))
        if not (os.path.exists(target) and os.path.getsize(target) == storage.size(path)):
            storage.write_bytes(target, storage.read_bytes(path))
    return local


class TfdsSource:
    """Split `split` of the TFDS data set `name`, its `image_key` images fitted to `resolution`."""

    def __init__(self, name: str, *, resolution: int, data_dir: str | os.PathLike, split: str = "train",
                 image_key: str = "image") -> None:
        if not data_dir:
            raise ValueError(f"TFDS data set {name!r} needs an explicit data_dir")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.name, self.split, self.image_key = name, split, image_key
        self.resolution = resolution
        data_dir = str(data_dir)
        if storage.is_url(data_dir):
            data_dir = local_copy(name, data_dir)
        self._examples = open_data_source(name, split=split, data_dir=data_dir)

    def __len__(self) -> int:
        return len(self._examples)

    def _image(self, index: int) -> np.ndarray:
        example = self._examples[int(index)]
        if self.image_key not in example:
            raise KeyError(f"TFDS data set {self.name!r} has no feature {self.image_key!r}; "
                           f"its features are {sorted(example)}")
        return fit_to_resolution(np.asarray(example[self.image_key]), self.resolution)

    def get(self, indices: ArrayLike) -> np.ndarray:
        """Images of `indices` (B,) -> uint8 (B, R, R, 3)."""
        indices = check_indices(indices, len(self))
        images = np.empty((len(indices), self.resolution, self.resolution, 3), np.uint8)
        # One record at a time: decoding, not reading, dominates, and the batched
        # `__getitems__` is broken under tfds.testing.mock_data (TFDS 4.9.10).
        for row, index in enumerate(indices):
            images[row] = self._image(index)
        return images
