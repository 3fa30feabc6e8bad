"""experiments/disentanglement.py at its smallest setting: the controls, a shapes pair over two
seeds and a digits pair, trained from scratch for 2 steps, measured, summarised with standard
errors, pictured, and skipped when run again; a second seed's model compiles nothing new. The
values checked have known answers: the summary's arithmetic from the run records, and the
controls' order (positive above negative)."""
import json
import math
import shutil

import pytest
from support import load_module

from isodiff_jax.analysis.networks import oracle


pytestmark = pytest.mark.slow  # the disentanglement study's smallest setting: six runs, controls


@pytest.fixture(scope="module")
def study(oracle16, tmp_path_factory):
    """The study with seed 0, then seed 1's pair trained, then the study with seeds 0 and 1 (which
    only measures seed 1): (script, argv, summary, tmp, measurers, compiles of that last call)."""
    from conftest import CompileCounter
    tmp = tmp_path_factory.mktemp("disentanglement")
    oracle.save(oracle16, str(tmp / "oracle"), {})
    argv = ["--quick", "--config", "configs/test.py", "--steps", "2", "--digits_seeds", "0", "--control_seeds", "2",
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
        assert run["metrics"]["rank_iso_t50"] >= 1.0  # rank·E tr(A²) / (E tr A)² ≥ 1 (Cauchy–Schwarz)
        if run["data"] == "digits":
            for share in ("probe_class_accuracy", "classifier_confident_fraction"):
                assert 0 <= run["metrics"][share] <= 1, (name, share)


def test_the_summary_is_the_arithmetic_of_the_run_records(study):
    """Known answers: with two seeds, each mean is the mean of the two records and each standard
    error is half the spread (std with ddof=1 over sqrt(2)); digits has one seed, so no error."""
    _, _, summary, tmp, _, _ = study
    record = lambda name: json.load(open(tmp / "results" / f"{name}.json"))["metrics"]
    for metric in ("pullback_xt_purity", "mrtl_over_floor", "probe_r2", "linear_xT_linearity"):
        zero = [record(f"shapes_scratch_lam0_seed{s}")[metric] for s in (0, 1)]
        reg = [record(f"shapes_scratch_lam1_seed{s}")[metric] for s in (0, 1)]
        stats = summary["shapes"][metric]
        assert stats["seeds"] == 2
        assert stats["lambda0"] == pytest.approx((zero[0] + zero[1]) / 2, rel=1e-12)
        assert stats["regularized_se"] == pytest.approx(abs(reg[1] - reg[0]) / 2, rel=1e-9, abs=1e-15)
        assert stats["difference_se"] == pytest.approx(abs((reg[1] - zero[1]) - (reg[0] - zero[0])) / 2, rel=1e-9,
                                                       abs=1e-15)
        assert stats["difference"] == pytest.approx(stats["regularized"] - stats["lambda0"])
    digits = summary["digits"]["probe_class_accuracy"]
    assert digits["seeds"] == 1 and math.isnan(digits["difference_se"])
    assert digits["lambda0"] == record("digits_scratch_lam0_seed0")["probe_class_accuracy"]


def test_the_controls_give_their_known_answers_under_the_quick_protocol(study):
    """The positive controls (factors on axes, rotated) beat the negative one (a nonlinear mix) on
    the measures that pass their controls (docs/results.md §6), at the test's small sizes."""
    script, _, summary, tmp, _, _ = study
    controls = summary["controls"]
    assert set(controls["shapes"]) == set(controls["digits"]) == {"axes", "rotated", "mixed"}
    for positive in ("axes", "rotated"):
        shapes, digits = controls["shapes"][positive], controls["digits"][positive]
        assert shapes["probe_r2"] > 0.8 > 0.2 > controls["shapes"]["mixed"]["probe_r2"]
        assert shapes["supervised_linearity"] > controls["shapes"]["mixed"]["supervised_linearity"] + 0.2
        assert shapes["supervised_additivity_error"] < controls["shapes"]["mixed"]["supervised_additivity_error"]
        assert digits["probe_class_accuracy"] > 0.3 > controls["digits"]["mixed"]["probe_class_accuracy"]
        assert digits["pullback_monotone"] > controls["digits"]["mixed"]["pullback_monotone"] + 0.3
    # one recorded protocol for controls and models, the spread of one measurement over the two
    # draws, and chance levels from edits read as unrelated images
    assert controls["protocol"] == script.protocol(script.options(True)) and controls["seeds"] == 2
    for name in summary["runs"]:
        assert json.load(open(tmp / "results" / f"{name}.json"))["protocol"] == controls["protocol"]
    assert controls["spread"]["shapes"]["mixed"]["probe_r2"] > 0
    for data in ("shapes", "digits"):
        level, spread = controls["chance"][data]["pullback_monotone"]
        assert 0 <= level < 0.5 and spread > 0
    assert controls["chance"]["shapes"]["supervised_precision"][0] < shapes["supervised_precision"]
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


def test_a_fine_tune_refuses_a_base_model_that_is_still_training(trained_workdir, tmp_path):
    """The base model's newest checkpoint must be the step its config plans: a copy of a finished
    4-step run passes, the same without its step-4 checkpoint is refused in one line."""
    study = load_module("experiments/disentanglement.py")
    study.check_base(trained_workdir)
    base = tmp_path / "base"
    shutil.copytree(trained_workdir, base)
    shutil.rmtree(base / "checkpoints" / "4")
    with pytest.raises(SystemExit, match=r"has reached step 2 of 4: finish it first"):
        study.check_base(str(base))
