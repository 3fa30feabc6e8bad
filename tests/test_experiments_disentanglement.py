"""experiments/disentanglement.py at its smallest setting: the controls, a shapes pair over two
seeds and a digits pair, trained from scratch for 2 steps, measured, summarised with standard
errors, pictured, and skipped when run again; a second seed's model compiles nothing new."""
import json
import math

import pytest
from support import load_module

from isodiff_jax.analysis import oracle


pytestmark = pytest.mark.slow  # the disentanglement study's smallest setting: six runs, controls


@pytest.fixture(scope="module")
def study(oracle16, tmp_path_factory):
    """The study with seed 0, then seed 1's pair trained, then the study with seeds 0 and 1 (which
    only measures seed 1): (script, argv, summary, tmp, measurers, compiles of that last call)."""
    from conftest import CompileCounter
    tmp = tmp_path_factory.mktemp("disentanglement")
    oracle.save(oracle16, str(tmp / "oracle"), {})
    argv = ["--quick", "--config", "configs/test.py", "--steps", "2", "--digits_seeds", "0",
            "--out", str(tmp / "runs"), "--results", str(tmp / "results"), "--pictures", str(tmp / "pictures"),
            "--oracle", str(tmp / "oracle"), "--classifier", str(tmp / "classifier")]
    script = load_module("experiments/disentanglement.py")
    measurers = {}
    script.main(argv + ["--seeds", "0"], measurers)
    script.main(argv + ["--seeds", "1", "--digits_seeds", "", "--train_only"])
    with CompileCounter() as counter:
        summary = script.main(argv + ["--seeds", "0,1"], measurers)
    return script, argv + ["--seeds", "0,1"], summary, tmp, measurers, counter.count


def test_the_study_measures_every_run_with_one_set_of_evaluators_per_model(study):
    _, _, summary, tmp, measurers, _ = study
    assert summary["runs"] == ["shapes_scratch_lam0_seed0", "shapes_scratch_lam1_seed0", "digits_scratch_lam0_seed0",
                               "digits_scratch_lam1_seed0", "shapes_scratch_lam0_seed1", "shapes_scratch_lam1_seed1"]
    assert len(measurers) == 2  # shapes (both seeds share it) and digits
    for name in summary["runs"]:
        run = json.load(open(tmp / "results" / f"{name}.json"))
        assert run["step"] == 2
        keys = ("pullback_xt_purity", "pullback_h_coverage", "mrtl_over_floor", "rank_iso_t50")
        keys += (("linear_xT_linearity", "linear_h_additivity_error", "probe_r2", "fd_oracle") if run["data"] == "shapes"
                 else ("probe_class_accuracy", "fd_classifier", "classifier_confident_fraction"))
        for key in keys:
            assert math.isfinite(run["metrics"][key]), (name, key)
        assert 0 < run["metrics"]["pullback_xt_purity"] <= 1


def test_the_key_pair_has_standard_errors_and_the_controls_are_recorded(study):
    _, _, summary, tmp, _, _ = study
    stats = summary["shapes"]["pullback_xt_purity"]
    assert stats["seeds"] == 2 and math.isfinite(stats["difference_se"])
    assert stats["difference"] == pytest.approx(stats["regularized"] - stats["lambda0"])
    assert summary["digits"]["probe_class_accuracy"]["seeds"] == 1
    assert set(summary["controls"]["shapes"]) == set(summary["controls"]["digits"]) == {"axes", "rotated", "mixed"}
    assert summary["controls"]["shapes"]["axes"]["probe_r2"] > summary["controls"]["shapes"]["mixed"]["probe_r2"]
    assert math.isfinite(summary["controls"]["digits"]["rotated"]["pullback_consistency"])
    for picture in summary["pictures"]:
        assert (tmp / "pictures" / picture).stat().st_size > 0
    assert "linearity_curves.png" in summary["pictures"]


def test_a_second_seed_compiles_nothing_and_a_rerun_measures_nothing(study):
    script, argv, summary, tmp, _, compiles = study
    assert compiles == 0  # seed 1's models measured by seed 0's evaluators: nothing compiled
    seed1 = json.load(open(tmp / "results" / "shapes_scratch_lam1_seed1.json"))
    rerun = script.main(argv)  # every record exists: nothing trains, nothing is measured
    assert rerun["shapes"] == summary["shapes"]
    assert json.load(open(tmp / "results" / "shapes_scratch_lam1_seed1.json")) == seed1
