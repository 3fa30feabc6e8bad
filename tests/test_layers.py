"""The package's imports point one way (tools/check_layers.py): core, data, the shared model
layer, then train and analysis side by side, then the entry points."""
from support import ROOT, load_module


def _tool():
    return load_module("tools/check_layers.py")


def test_imports_point_one_way():
    tool = _tool()
    bad, checked = tool.violations(ROOT)
    assert checked > 50 and bad == []
    assert tool.circles(ROOT) == [] and tool.experiment_violations(ROOT) == []


def test_the_check_catches_a_circle_and_a_study_that_edits_sys_path(tmp_path):
    tool = _tool()
    data = tmp_path / "isodiff_jax" / "data"
    data.mkdir(parents=True)
    (data / "__init__.py").write_text("")
    (data / "pipeline.py").write_text("def f():\n    from isodiff_jax.data import workers\n")
    (data / "workers.py").write_text("from isodiff_jax.data.pipeline import Prefetcher\n")
    (tmp_path / "isodiff_jax" / "spec.py").write_text("import experiments.common\n")
    studies = tmp_path / "experiments"
    studies.mkdir()
    (studies / "lambda_study.py").write_text("import sys\nsys.path.insert(0, '..')\n")
    (studies / "disentanglement.py").write_text("import lambda_study\nfrom experiments import common\n")
    assert tool.circles(str(tmp_path)) == ["isodiff_jax.data.pipeline -> isodiff_jax.data.workers -> "
                                           "isodiff_jax.data.pipeline"]
    bad = tool.experiment_violations(str(tmp_path))
    assert any(line.startswith("experiments/lambda_study.py: touches sys.path") for line in bad)
    assert any("imports the sibling script 'lambda_study'" in line for line in bad)
    assert any(line.startswith("isodiff_jax.spec -> experiments.common") for line in bad) and len(bad) == 3


def test_the_check_catches_an_upward_and_a_sideways_import(tmp_path):
    tool = _tool()
    package = tmp_path / "isodiff_jax"
    (package / "train").mkdir(parents=True)
    (package / "analysis").mkdir()
    (package / "geometry.py").write_text("from isodiff_jax.train import loop\n")
    (package / "train" / "loop.py").write_text("def f():\n    from isodiff_jax.analysis import suite\n")
    (package / "analysis" / "suite.py").write_text("import isodiff_jax.geometry\n")
    bad, checked = tool.violations(str(tmp_path))
    assert checked == 3
    assert any(line.startswith("isodiff_jax.geometry -> isodiff_jax.train") for line in bad)
    assert any("side by side" in line for line in bad) and len(bad) == 2


def test_the_longest_prefix_decides_the_layer(tmp_path):
    """pretrained.cli is an entry point (it builds a training state); the rest of pretrained is
    the model layer and may not import training."""
    tool = _tool()
    assert tool.layer_of("isodiff_jax.pretrained.cli") == "entry"
    assert tool.layer_of("isodiff_jax.pretrained.folder") == "model"
    package = tmp_path / "isodiff_jax" / "pretrained"
    package.mkdir(parents=True)
    (package / "cli.py").write_text("from isodiff_jax.train import step\n")
    (package / "folder.py").write_text("from isodiff_jax.train import step\n")
    bad, checked = tool.violations(str(tmp_path))
    assert checked == 2 and len(bad) == 1 and bad[0].startswith("isodiff_jax.pretrained.folder -> isodiff_jax.train")


def test_analysis_rooms_point_one_way(tmp_path):
    tool = _tool()
    rooms = tmp_path / "isodiff_jax" / "analysis"
    for room in ("networks", "measures", "edits"):
        (rooms / room).mkdir(parents=True)
    (rooms / "measures" / "probe.py").write_text("from isodiff_jax.analysis.networks import oracle\n")
    (rooms / "networks" / "oracle.py").write_text("from isodiff_jax.analysis.edits import scoring\n")
    (rooms / "edits" / "scoring.py").write_text("from isodiff_jax.analysis import registry\n")
    (rooms / "registry.py").write_text("from isodiff_jax.analysis.edits import scoring\n")
    bad, checked = tool.violations(str(tmp_path))
    assert checked == 4 and len(bad) == 2
    assert any(line.startswith("isodiff_jax.analysis.networks.oracle -> isodiff_jax.analysis.edits") for line in bad)
    assert any(line.startswith("isodiff_jax.analysis.edits.scoring -> isodiff_jax.analysis.registry") for line in bad)
