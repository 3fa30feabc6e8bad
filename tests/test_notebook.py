"""notebooks/tour.ipynb: stored without outputs, and it runs from top to bottom in a fresh kernel
of this interpreter (nbclient), showing what its text claims.

The kernel is this interpreter, named by a kernelspec written for the test (JUPYTER_PATH), so a
`python3` kernelspec elsewhere on the machine cannot pick another Python. It shares the test
suite's persistent compilation cache, so a second run skips most XLA compiles.
"""
import json
import math
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # runs the whole tour notebook in a kernel


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "tour.ipynb")
KERNEL = "python3"  # the name the notebook's metadata gives


def _assert_no_outputs(nb, where):
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{where}: code cell {i} has outputs"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL
    _assert_no_outputs(nb, "working tree")
    committed = subprocess.run(["git", "show", "HEAD:notebooks/tour.ipynb"], cwd=ROOT, capture_output=True, text=True)
    if committed.returncode == 0:  # once committed, the committed version too
        _assert_no_outputs(nbformat.reads(committed.stdout, as_version=4), "HEAD")


def _kernelspec(directory):
    """A `python3` kernelspec that runs this interpreter, with the test suite's compilation cache."""
    path = os.path.join(directory, "kernels", KERNEL)
    os.makedirs(path)
    cache = os.environ.get("ISODIFF_JAX_CACHE", os.path.join(ROOT, ".jax_cache"))
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "isodiff-jax test kernel", "language": "python",
            "env": {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(cache),
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1.0"}}
    with open(os.path.join(path, "kernel.json"), "w") as f:
        json.dump(spec, f)


def _text(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


def _floats(pattern, text) -> list:
    found = re.findall(pattern, text, re.MULTILINE)
    assert found, f"no output matches {pattern!r}"
    return [float(v) for v in found]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run in a fresh kernel with the repository root as working directory."""
    kernels = tmp_path_factory.mktemp("jupyter")
    _kernelspec(str(kernels))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(kernels))
    before = sorted(os.listdir(os.path.dirname(NOTEBOOK)))
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": ROOT}}).execute()
    finally:
        mp.undo()
    assert sorted(os.listdir(os.path.dirname(NOTEBOOK))) == before, "the notebook wrote into notebooks/"
    return nb


def test_notebook_runs_and_shows_results(executed):
    text = _text(executed)
    errors = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors

    (loss,) = _floats(r"^final loss: (\S+)$", text)
    assert math.isfinite(loss) and loss > 0

    (workdir,) = re.findall(r"^workdir: (.+)$", text, re.MULTILINE)
    assert not os.path.abspath(workdir).startswith(ROOT + os.sep), "the workdir must be outside the repository"
    assert not os.path.exists(workdir), "the notebook's last cell removes its workdir"

    per_t = _floats(r"^t=\s*\d+\s+rank·L_iso = (\S+)$", text)  # jax.vmap over timesteps: one per t
    assert len(per_t) == 5 and all(math.isfinite(v) and v > 0 for v in per_t)

    (grad_norm,) = _floats(r"^gradient norm: (\S+)$", text)
    assert math.isfinite(grad_norm) and grad_norm > 0
    for name in ("up_blocks_0", "up_blocks_1", "conv_out"):  # an encoder metric: no gradient in the decoder
        assert _floats(rf"^\s+{name}\s+(\S+)$", text) == [0.0]
    assert _floats(r"^\s+mid_block\s+(\S+)$", text)[0] > 0

    for name in ("3·Qx", "0.1·Qx"):  # scaled isometries: rank·L_iso = 1
        estimate, exact = re.findall(rf"^{re.escape(name)}\s+rank·L_iso: estimate (\S+), exact (\S+)$", text,
                                     re.MULTILINE)[0]
        assert abs(float(exact) - 1) < 1e-4 and abs(float(estimate) - 1) < 0.05
    (wx,) = _floats(r"^Wx\s+rank·L_iso: estimate \S+, exact (\S+)$", text)
    assert wx > 1.01

    mrtl_identity, mrtl_isometry = _floats(r"^mRTL (?:identity|3·Qx)\s+(\S+)$", text)
    assert abs(mrtl_identity - math.pi / (2 * math.sqrt(2))) < 0.02 and abs(mrtl_isometry - mrtl_identity) < 1e-4
    unet = _floats(r"^mRTL U-Net step \d: t=50 (\S+),", text)
    assert len(unet) == 2 and all(math.isfinite(v) and v >= 1 for v in unet)

    values = [float(v) for v in re.findall(r"[\d.e+-]+", re.search(r"first sample: \[(.+)\]", text).group(1))]
    assert len(values) == 3 and values == sorted(values, reverse=True) and values[-1] > 0
    stretch = [float(v) for v in re.findall(r"[\d.e+-]+", re.search(r"/ \(δ s_1\): \[(.+)\]", text).group(1))]
    assert len(stretch) == 4 and all(abs(v - 1) < 0.05 for v in stretch)  # |J v_1| = s_1
    (declared,) = _floats(r"^(\d+) values declared by the registry", text)
    assert declared > 10
    scored = re.findall(r"^pullback step \d: x_t purity (\S+), coverage (\S+), s_1 (\S+)$", text, re.MULTILINE)
    assert len(scored) == 2  # the older checkpoint and the newest, by one Suite
    for purity, coverage, s1 in scored:
        assert 0 < float(purity) <= 1 and 1 <= float(coverage) <= 2 and float(s1) > 0

    pngs = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs
            if "image/png" in out.get("data", {})]
    assert len(pngs) >= 3, "the sample grid, the interpolation and the pullback edits are shown inline"
