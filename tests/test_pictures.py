"""Pictures: each writes a PNG of the expected size from small random inputs; importing and
drawing leave matplotlib's backend alone (pictures.py uses no pyplot)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from isodiff_jax.analysis import pictures

RNG = np.random.default_rng(0)


def _images(*shape):
    return RNG.uniform(-1, 1, shape).astype(np.float32)


def _png_size(path):
    assert os.path.isfile(path) and not os.path.exists(path + ".tmp.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size  # (width, height)


def test_interpolation(tmp_path):
    rows = {"slerp": _images(5, 8, 8, 3), "lerp": _images(5, 8, 8, 3)}
    assert isinstance(pictures.interpolation_figure(rows), Figure)
    path = pictures.interpolation(str(tmp_path / "sub" / "interpolation.png"), rows)
    assert _png_size(path) == (1200, 640)  # figsize (12, 3.2 per row) at 100 dpi


def test_editing(tmp_path):
    alphas = (-2.0, -1.0, 1.0, 2.0)
    strips = _images(3, 1 + len(alphas), 8, 8, 3)
    assert isinstance(pictures.editing_figure(strips, ["a", "b", "c"], alphas, "edits"), Figure)
    path = pictures.editing(str(tmp_path / "supervised.png"), strips, ["a", "b", "c"], alphas, "edits")
    assert _png_size(path) == (700, 420)  # 1.4 inch per column and per row


@pytest.mark.parametrize("draw,values", [
    (lambda path, v: pictures.histogram(path, v, "RTL"), {"a": RNG.normal(size=50), "b": RNG.normal(size=50)}),
    (pictures.spectra, {"a": np.sort(RNG.uniform(size=(6, 10)))[:, ::-1]}),
])
def test_histogram_and_spectra(tmp_path, draw, values):
    assert _png_size(draw(str(tmp_path / "plot.png"), values)) == (600, 400)


def test_histogram_and_spectra_figures():
    assert isinstance(pictures.histogram_figure({"a": RNG.normal(size=20)}, "x"), Figure)
    assert isinstance(pictures.spectra_figure({"a": RNG.uniform(size=(4, 5))}), Figure)


def test_inversion_and_side_by_side(tmp_path):
    path = pictures.inversion(str(tmp_path / "inversion.png"), _images(4, 16, 16, 3), _images(4, 16, 16, 3))
    width, height = _png_size(path)
    scale = 96 // 16
    assert (width, height) == (scale * (4 * 18 + 2), scale * (2 * 18 + 2))  # 2-pixel gaps in the grid
    other = pictures.histogram(str(tmp_path / "histogram.png"), {"a": RNG.normal(size=20)}, "x")
    both = pictures.side_by_side(str(tmp_path / "both.png"), [path, other], ["run a", "run b"])
    assert _png_size(both) == (width + 600, 16 + max(height, 400))  # 16-pixel label strip


def test_import_and_drawing_leave_the_backend_alone(tmp_path):
    """A backend other than Agg is chosen first; pictures must neither switch it nor load pyplot."""
    script = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "before = matplotlib.get_backend()\n"
        "from isodiff_jax.analysis import pictures\n"
        f"pictures.histogram({str(tmp_path / 'h.png')!r}, {{'a': [1.0, 2.0, 2.0]}}, 'x')\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
