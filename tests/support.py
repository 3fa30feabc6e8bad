"""Helpers shared by test modules (pytest puts this folder on sys.path)."""
import functools
import importlib.util
import os

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


def json_numbers(tree) -> list:
    """Every number in a JSON tree (booleans excluded)."""
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in json_numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in json_numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []
