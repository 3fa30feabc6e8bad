"""The safetensors format through the `safetensors` package, the reference implementation (its
numpy API: no torch; bfloat16 through ml_dtypes), with this project's errors: a damaged or
foreign file is an InvalidValue naming the file and what is wrong; writes are atomic.
"""
import tempfile

import numpy as np
import safetensors
import safetensors.numpy

from isodiff_jax import storage
from isodiff_jax.errors import InvalidValue


def read(path: str) -> dict[str, np.ndarray]:
    """name -> array (the file's dtype, shape as stored); InvalidValue naming the file when it is
    not a well-formed safetensors file."""
    try:
        if not storage.is_url(path):
            return safetensors.numpy.load_file(path)
        # load_file, not load(bytes): only the file reader knows bfloat16 (safetensors 0.7)
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as local:
            local.write(storage.read_bytes(path))
            local.flush()
            return safetensors.numpy.load_file(local.name)
    except safetensors.SafetensorError as error:
        reason = str(error).removeprefix("Error while deserializing header: ")
        raise InvalidValue(f"{storage.absolute(path)} is not a readable safetensors file: {reason}") from None


def write(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `arrays` with optional string `metadata` to `path`, atomically (a file that is
    complete or absent, never half-written)."""
    arrays = {name: np.ascontiguousarray(value) if np.ndim(value) else np.asarray(value)
              for name, value in arrays.items()}
    try:
        data = safetensors.numpy.save(arrays, metadata=metadata)
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        raise ValueError(f"cannot write {path} as safetensors: {error}") from error
    storage.write_bytes(path, data)
