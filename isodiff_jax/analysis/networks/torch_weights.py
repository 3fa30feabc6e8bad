"""Reading PyTorch state dicts (saved as .npz with their torch names) into Flax trees: reading the
.npz, the key and shape check with one error naming every problem, and the layout conversion.
Used by the Inception-v3 (FID) and LPIPS loaders."""
import io
import zipfile
from typing import Callable, Iterable

import numpy as np
from flax import traverse_util

from isodiff_jax import storage
from isodiff_jax.errors import InvalidValue

SHOWN = 8  # names listed in an error before "... (N in all)"


def _names(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:SHOWN])
    return shown if len(keys) <= SHOWN else f"{shown}, ... ({len(keys)} in all)"


def read_npz(path: str, *, what: str, expected: Iterable[str], how: str) -> dict:
    """name -> array of the .npz at `path`. Raises InvalidValue naming the file, `what` it should be,
    the `expected` keys and `how` to make the file when it is not an .npz of plain arrays (text, a
    pickle, an .npy, a torch .pth, a damaged archive)."""
    source = storage.absolute(path)

    def refuse(reason):
        return InvalidValue(f"{source} is not {what}: {reason}; expected an .npz holding the arrays "
                            f"{_names(sorted(expected))}, as {how} writes")

    if not storage.is_file(path):
        raise refuse("not a file")
    content = io.BytesIO(storage.read_bytes(path))
    if not zipfile.is_zipfile(content):  # np.load would call a text or pickle file "pickled data"
        raise refuse("not an .npz (zip) archive")
    try:
        with np.load(content, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # object arrays, damaged members
        raise refuse(f"unreadable ({type(error).__name__}: {error})") from None
    if not_arrays := [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]:
        raise refuse(f"it holds entries that are not .npy arrays: {_names(not_arrays)}")
    return arrays


def check_keys(state_dict, expected: dict, *, source: str, what: str, ignored: Iterable[str] = ()) -> None:
    """Raises InvalidValue (a ValueError) naming `source`, `what` it should be, and every missing,
    unexpected or mis-shaped key (long lists abbreviated); expected maps torch names to shapes;
    `ignored` keys may be present or not."""
    ignored = set(ignored)
    given = {k for k in state_dict if k not in ignored}
    problems = []
    if missing := sorted(set(expected) - given):
        problems.append(f"missing keys: {_names(missing)}")
    if extra := sorted(given - set(expected)):
        problems.append(f"unexpected keys: {_names(extra)}")
    wrong = [f"{k} has shape {tuple(np.shape(state_dict[k]))}, expected {expected[k]}"
             for k in sorted(given & set(expected)) if tuple(np.shape(state_dict[k])) != expected[k]]
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:SHOWN]) + (f"; ... ({len(wrong)} in all)"
                                                                        if len(wrong) > SHOWN else ""))
    if problems:
        raise InvalidValue(f"{source} is not {what}: " + " | ".join(problems))


def to_flax(state_dict, flax_paths: Iterable[tuple], torch_name: Callable[[tuple], str]) -> dict:
    """The Flax tree with a float32 leaf at each path, read from state_dict[torch_name(path)];
    4-d convolution kernels go from torch's OIHW to Flax's HWIO."""
    flat = {}
    for path in flax_paths:
        value = np.asarray(state_dict[torch_name(path)], np.float32)
        flat[path] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    return traverse_util.unflatten_dict(flat)
