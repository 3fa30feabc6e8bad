"""Reading PyTorch state dicts (saved as .npz with their torch names) into Flax trees: the key
and shape check with one error naming every problem, and the layout conversion. Used by the
Inception-v3 (FID) and LPIPS loaders."""
from typing import Callable, Iterable

import numpy as np
from flax import traverse_util


def check_keys(state_dict, expected: dict, *, source: str, what: str, ignored: Iterable[str] = ()) -> None:
    """Raises ValueError naming `source`, `what` it should be, and every missing, unexpected or
    mis-shaped key; expected maps torch names to shapes; `ignored` keys may be present or not."""
    ignored = set(ignored)
    given = {k for k in state_dict if k not in ignored}
    problems = []
    if missing := sorted(set(expected) - given):
        problems.append(f"missing keys: {', '.join(missing)}")
    if extra := sorted(given - set(expected)):
        problems.append(f"unexpected keys: {', '.join(extra)}")
    wrong = [f"{k} has shape {tuple(np.shape(state_dict[k]))}, expected {expected[k]}"
             for k in sorted(given & set(expected)) if tuple(np.shape(state_dict[k])) != expected[k]]
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if problems:
        raise ValueError(f"{source} is not {what}: " + " | ".join(problems))


def to_flax(state_dict, flax_paths: Iterable[tuple], torch_name: Callable[[tuple], str]) -> dict:
    """The Flax tree with a float32 leaf at each path, read from state_dict[torch_name(path)];
    4-d convolution kernels go from torch's OIHW to Flax's HWIO."""
    flat = {}
    for path in flax_paths:
        value = np.asarray(state_dict[torch_name(path)], np.float32)
        flat[path] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    return traverse_util.unflatten_dict(flat)
