"""Checks that the package's imports point one way, bottom to top:

    core       geometry, isometry, unet, diffusion, images, runtime, quiet, errors, storage, progress
    data       isodiff_jax.data
    model      autoencoder (on the U-Net's layers), spec, sharding, checkpoint,
                                                (what training and analysis share)
               pretrained                       (diffusers import and export)
    train | analysis                            (side by side: neither imports the other)
    entry      config, launch, pretrained.cli   (config -> typed values; nothing imports them)

Inside analysis the rooms are ordered too: the contract and inputs (evaluator, options,
sampling) ← networks ← measures ← edits ← the rest (registry, suite, cli, pictures, load).

A module belongs to the layer of the longest listed prefix of its name: pretrained.cli (the
import command, which writes a training state) is an entry point, the rest of pretrained is not.

Inside core, only isometry may import (geometry); anything may import errors and storage (every path
the project reads or writes goes through it). Every `import` counts, also those inside
functions. No two modules may import each other, directly or through others (a circle).

The studies in experiments/ sit above everything: they import the package and the `experiments`
package (`from experiments import common`), never a sibling script as a top-level module and
never through `sys.path`; the package never imports them.

Prints each offending import and exits 1, or prints a summary and exits 0.

Usage: python tools/check_layers.py [ROOT]   (ROOT: the repository, default: this file's parent)
"""
import ast
import os
import sys

PACKAGE = "isodiff_jax"
LAYERS = {  # layer -> (rank, module prefixes)
    "core": (0, ("geometry", "isometry", "unet", "diffusion", "images", "runtime", "quiet", "errors", "storage",
                  "progress")),
    "data": (1, ("data",)),
    "model": (2, ("autoencoder", "spec", "sharding", "checkpoint", "pretrained")),
    "train": (3, ("train",)),
    "analysis": (3, ("analysis",)),
    "entry": (4, ("config", "launch", "pretrained.cli", "pretrained.__main__")),
}
CORE_IMPORTS = {"isometry": {"geometry"}}  # the only imports allowed inside core
ANALYSIS_ROOMS = {"evaluator": 0, "options": 0, "sampling": 0, "networks": 1, "measures": 2, "edits": 3}  # else 4


def analysis_room(module: str) -> int:
    """'isodiff_jax.analysis.measures.rtl' -> 2 (its room's rank inside analysis)."""
    parts = module.split(".")
    return ANALYSIS_ROOMS.get(parts[2], 4) if len(parts) > 2 else 4


def layer_of(module: str) -> str:
    """'isodiff_jax.train.loop' -> 'train' (the layer of the longest listed prefix)."""
    parts = module.split(".")[1:]
    matches = [(len(prefix.split(".")), name) for name, (_, prefixes) in LAYERS.items() for prefix in prefixes
               if parts[:len(prefix.split("."))] == prefix.split(".")]
    if not matches:
        raise ValueError(f"{module} is in no layer: add it to tools/check_layers.py")
    return max(matches)[1]


def module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path: str, module: str) -> set:
    """Every isodiff_jax module that `module` (at `path`) imports."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = module.split(".")[:-node.level] if not path.endswith("__init__.py") else module.split(".")
                base = ".".join(parts + ([base] if base else []))
            if base.startswith(PACKAGE):  # base.name: a module, or a name inside one (same layer)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def violations(root: str) -> tuple[list, int]:
    """-> (list of 'a -> b: why', number of imports checked)."""
    bad, checked = [], 0
    for directory, _, files in os.walk(os.path.join(root, PACKAGE)):
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = os.path.join(directory, file)
            module = module_name(root, path)
            if module == PACKAGE:
                continue
            here = layer_of(module)
            for target in sorted(imports_of(path, module)):
                if target == PACKAGE:
                    continue
                checked += 1
                there = layer_of(target)
                why = _why_not(module, here, target, there)
                if why:
                    bad.append(f"{module} -> {target}: {why}")
    return bad, checked


def _module_files(root: str) -> dict:
    """{module name: path} of every module of the package."""
    out = {}
    for directory, _, files in os.walk(os.path.join(root, PACKAGE)):
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, file)
            out[module_name(root, path)] = path
    return out


def _resolved(target: str, modules: dict) -> str:
    """'isodiff_jax.data.workers' for `from isodiff_jax.data import workers` (imports_of gives
    the package, or the imported name below it when that is a module)."""
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def circles(root: str) -> list:
    """Each import circle among the package's modules, as 'a -> b -> a'."""
    modules = _module_files(root)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(open(path).read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PACKAGE):
                targets |= {_resolved(f"{node.module}.{a.name}", modules) for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {_resolved(a.name, modules) for a in node.names if a.name.startswith(PACKAGE)}
        graph[module] = sorted(t for t in targets if t in modules and t != module and not modules[t].endswith(
            "__init__.py"))
    found, done = [], set()

    def visit(module, path):
        if module in path:
            found.append(" -> ".join(path[path.index(module):] + [module]))
            return
        if module in done:
            return
        for target in graph[module]:
            visit(target, path + [module])
        done.add(module)
    for module in sorted(graph):
        visit(module, [])
    return found


def experiment_violations(root: str) -> list:
    """'file: why' for each study that edits sys.path or imports a sibling script as a top-level
    module, and each package module that imports the studies."""
    folder, bad = os.path.join(root, "experiments"), []
    if not os.path.isdir(folder):
        return bad
    siblings = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}
    for file in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
        path = os.path.join(folder, file)
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                bad.append(f"experiments/{file}: touches sys.path (run the studies as `python -m experiments.<name>`)")
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            bad += [f"experiments/{file}: imports the sibling script {n.split('.')[0]!r} as a top-level module "
                    f"(use `from experiments import {n.split('.')[0]}`)" for n in names if n.split(".")[0] in siblings]
    for module, path in _module_files(root).items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{module} -> {n}: the package does not import the studies" for n in names
                    if n.split(".")[0] == "experiments"]
    return bad


def _why_not(module: str, here: str, target: str, there: str):
    if here == there == "analysis" and analysis_room(target) > analysis_room(module):
        return (f"analysis rooms point one way (evaluator, options, sampling <- networks <- measures <- edits <- "
                f"the rest): {module.split('.')[2]} imports {target.split('.')[2]}")
    if here == there:
        source, imported = module.split(".")[1], target.split(".")[1]
        if here == "core" and imported not in CORE_IMPORTS.get(source, set()) | {source, "errors", "storage"}:
            return ("core modules do not import each other (only isometry -> geometry, and anything -> errors "
                    "and storage)")
        return None
    (rank_here, _), (rank_there, _) = LAYERS[here], LAYERS[there]
    if rank_there > rank_here:
        return f"{here} (layer {rank_here}) imports {there} (layer {rank_there}), a layer above it"
    if rank_there == rank_here:
        return f"{here} and {there} sit side by side and must not import each other"
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bad, checked = violations(root)
    bad += [f"import circle: {circle}" for circle in circles(root)] + experiment_violations(root)
    for line in bad:
        print(line)
    print(f"{checked} imports checked, {len(bad)} against the layers")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
