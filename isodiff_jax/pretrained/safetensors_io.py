"""The safetensors file format, read and written with numpy alone (no torch, no `safetensors`).

A file is: an 8-byte little-endian unsigned header length N; N bytes of JSON mapping each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__" of
strings); then the raw little-endian tensor bytes, offsets counted from the end of the header.
"""
import json
import os
import struct

import ml_dtypes
import numpy as np

from isodiff_jax.errors import InvalidValue

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # the reference implementation's limit


def read(path: str) -> dict[str, np.ndarray]:
    """name -> array (the file's dtype, shape as stored); InvalidValue naming the file when it is
    not a well-formed safetensors file."""
    size = os.path.getsize(path)

    def refuse(reason):
        return InvalidValue(f"{os.path.abspath(path)} is not a readable safetensors file: {reason}")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise refuse(f"{size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise refuse(f"header length {length} does not fit the file's {size} bytes")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise refuse(f"the header is not JSON ({error})") from None
        data = f.read()
    if not isinstance(header, dict):
        raise refuse("the header is not a JSON object")
    header.pop("__metadata__", None)
    return {name: _tensor(name, entry, data, refuse) for name, entry in header.items()}


def _tensor(name, entry, data: bytes, refuse) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = np.dtype(DTYPES[entry["dtype"]]), tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise refuse(f"tensor {name!r} has a malformed entry {entry!r}") from None
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
        raise refuse(f"tensor {name!r}: bytes [{begin}, {end}) do not hold {entry['dtype']} {list(shape)} "
                     f"within the {len(data)} data bytes")
    return np.frombuffer(data, dtype.newbyteorder("<"), count, begin).reshape(shape).copy()


def write(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `arrays` (names sorted, contiguous little-endian bytes) to `path`, atomically."""
    header, chunks, offset = {}, [], 0
    for name in sorted(arrays):
        array = np.asarray(arrays[name])  # tobytes() is C order; ascontiguousarray would make 0-d arrays 1-d
        if array.dtype not in CODES:
            raise ValueError(f"{name}: dtype {array.dtype} has no safetensors code")
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data then starts 8-byte aligned, as the reference writer does
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk)
    os.replace(path + ".tmp", path)
