"""The safetensors format through the `safetensors` package, the reference implementation (its
numpy API: no torch; bfloat16 through ml_dtypes), with this project's errors: a damaged or
foreign file is an InvalidValue naming the file and what is wrong; writes are atomic.

The format has no checksum, and a few flipped bytes in the data section leave a well-formed file
(weights of 0.06 read back as ±100). So:
- every file this project writes carries a SHA-256 of its tensors (names and bytes, in name
  order) in its metadata (`isodiff_sha256`), and a read checks it: any change to the data of
  such a file is found;
- every float tensor of any file must be finite (a flip that makes a NaN or an inf is found in a
  file from anywhere).
Still undetectable: a flip in a file written elsewhere (diffusers, PyTorch) that leaves finite
values; there is nothing to compare it with.
"""
import hashlib
import json
import tempfile

import numpy as np
import safetensors
import safetensors.numpy

from isodiff_jax import storage
from isodiff_jax.errors import InvalidValue

CHECKSUM_KEY = "isodiff_sha256"


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the tensors' names and bytes, in name order (what `write` records)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + b"\0" + np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def _metadata(path: str) -> dict:
    """The file's `__metadata__` (its header is read again; the tensors were read already)."""
    with storage.open_read(path) as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)).get("__metadata__") or {}


def read(path: str) -> dict[str, np.ndarray]:
    """name -> array (the file's dtype, shape as stored); InvalidValue naming the file when it is
    not a well-formed safetensors file, fails its checksum, or holds a non-finite value."""
    try:
        if not storage.is_url(path):
            arrays = safetensors.numpy.load_file(path)
        else:  # load_file, not load(bytes): only the file reader knows bfloat16 (safetensors 0.7)
            with tempfile.NamedTemporaryFile(suffix=".safetensors") as local:
                local.write(storage.read_bytes(path))
                local.flush()
                arrays = safetensors.numpy.load_file(local.name)
    except safetensors.SafetensorError as error:
        reason = str(error).removeprefix("Error while deserializing header: ")
        raise InvalidValue(f"{storage.absolute(path)} is not a readable safetensors file: {reason}") from None
    recorded = _metadata(path).get(CHECKSUM_KEY)
    if recorded is not None and recorded != checksum(arrays):
        raise InvalidValue(f"{storage.absolute(path)} is damaged: its tensors do not match the SHA-256 written with "
                           f"them; export or download it again")
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
            if not np.all(np.isfinite(value.astype(np.float32))):
                raise InvalidValue(f"{storage.absolute(path)}: tensor {name} holds non-finite values (a damaged "
                                   f"file?); export or download it again")
    return arrays


def write(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `arrays` with optional string `metadata` to `path`, atomically (a file that is
    complete or absent, never half-written)."""
    arrays = {name: np.ascontiguousarray(value) if np.ndim(value) else np.asarray(value)
              for name, value in arrays.items()}
    metadata = {**(metadata or {}), CHECKSUM_KEY: checksum(arrays)}
    try:
        data = safetensors.numpy.save(arrays, metadata=metadata)
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        raise ValueError(f"cannot write {path} as safetensors: {error}") from error
    storage.write_bytes(path, data)
