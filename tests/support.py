"""Helpers shared by test modules (pytest puts this folder on sys.path)."""
import functools
import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def load_module(relative_path: str):
    """The Python file at `relative_path` (from the repository root) as a module: the scripts in
    experiments/ and tools/ and the fixture makers in tests/data/ are files, not package modules.
    Loaded once per process: train.py defines absl flags, which may be defined only once (two
    test files that load it can share a pytest-xdist worker)."""
    name = os.path.splitext(os.path.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# XLA's optimising CPU back end, for the few tests whose running time is the longer part (the
# suite compiles with JAX_DISABLE_MOST_OPTIMIZATIONS=1, see conftest.py):
# `jax.jit(f).lower(*args).compile(OPTIMISED)`.
OPTIMISED = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


def random_params(shapes, seed: int, dtype=np.float32):
    """Parameters of the given shapes (a tree of arrays or jax.ShapeDtypeStruct, e.g.
    `spec.abstract_params()`) drawn with numpy, none of them zero: each kernel N(0, 1/fan-in),
    each vector (bias, norm scale) 1 or 0 plus N(0, 0.1²). A model with these weights computes
    something that depends on every layer, the zero-initialised output too, and nothing is
    compiled to make them (flax's eager init compiles each initializer op, 10-20 s on 2 cores)."""
    import jax
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        shape = tuple(leaf.shape)
        if len(shape) >= 2:
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(dtype)
        centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return (centre + 0.1 * rng.standard_normal(shape)).astype(dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def json_numbers(tree) -> list:
    """Every number in a JSON tree (booleans excluded)."""
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in json_numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in json_numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def fill(disk, leave: int) -> None:
    """Fills the file system of the folder `disk` (conftest's `small_disk`) with one file,
    `disk/filler`, until `leave` bytes are free."""
    stats = os.statvfs(disk)
    with open(os.path.join(disk, "filler"), "wb") as f:
        f.write(bytes(stats.f_bavail * stats.f_frsize - leave))


# Damages of a file the project reads back (test_damaged_files.py, test_checkpoint.py)
RANDOM = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()  # not UTF-8 either


def cut(data: bytes) -> bytes:
    return data[:len(data) // 2]


def lost_newline(data: bytes) -> bytes:
    return data.rstrip(b"\n")


def wrong_type(data: bytes) -> bytes:
    return b'["a JSON array", 1]\n'


def random_bytes(data: bytes) -> bytes:
    return RANDOM


DAMAGES = (cut, lost_newline, wrong_type, random_bytes)


def damage(path, how) -> None:
    """Rewrites the file at `path` (a pathlib.Path) damaged by `how`."""
    path.write_bytes(how(path.read_bytes()))
