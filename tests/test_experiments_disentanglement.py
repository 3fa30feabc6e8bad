"""experiments/disentanglement.py at its smallest setting: the controls, a shapes pair and a
digits pair, trained from scratch for 2 steps, measured, summarised, pictured, and skipped when
run again; a model measured after its pair's first (a run that finishes later, --measure_only)
compiles nothing new. The values checked have known answers: the summary's arithmetic from the
run records (over several seeds in test_study_tables.py), and the controls' order (positive
above negative)."""
import json
import math
import shutil

import pytest
from support import load_module

from isodiff_jax.analysis.networks import oracle


pytestmark = pytest.mark.slow  # the disentanglement study's smallest setting: four runs, controls

LATE = "shapes_scratch_lam1_seed0"  # the run that "finishes later"


@pytest.fixture(scope="module")
def study(oracle16, tmp_path_factory):
    """The four runs trained (--train_only), then measured (--measure_only) while LATE's workdir is
    away, then measured again once it is back (only LATE is measured): (script, argv, summary,
    tmp, measurers, compiles of that last call, the summary without LATE)."""
    from conftest import CompileCounter
    tmp = tmp_path_factory.mktemp("disentanglement")
    oracle.save(oracle16, str(tmp / "oracle"), {})
    argv = ["--quick", "--config", "configs/test.py", "--steps", "2", "--seeds", "0", "--digits_seeds", "0",
            "--control_seeds", "2", "--out", str(tmp / "runs"), "--results", str(tmp / "results"),
            "--pictures", str(tmp / "pictures"), "--oracle", str(tmp / "oracle"), "--classifier", str(tmp / "classifier")]
    script = load_module("experiments/disentanglement.py")
    measurers = {}
    script.main(argv + ["--train_only"])
    (tmp / "runs" / LATE).rename(tmp / "away")
    without_late = script.main(argv + ["--measure_only"], measurers)
    (tmp / "away").rename(tmp / "runs" / LATE)
    with CompileCounter() as counter:
        summary = script.main(argv + ["--measure_only"], measurers)
    return script, argv, summary, tmp, measurers, counter.count, without_late


def test_the_study_measures_every_run_with_one_set_of_evaluators_per_model(study):
    _, _, summary, tmp, measurers, _, without_late = study
    assert summary["runs"] == ["shapes_scratch_lam0_seed0", "shapes_scratch_lam1_seed0", "digits_scratch_lam0_seed0",
                               "digits_scratch_lam1_seed0"]
    assert without_late["runs"] == [name for name in summary["runs"] if name != LATE]
    assert without_late["shapes"] == {} and summary["shapes"]  # no pair without LATE
    assert len(measurers) == 2  # shapes (both λ share it) and digits
    for name in summary["runs"]:
        run = json.load(open(tmp / "results" / f"{name}.json"))
        assert run["step"] == 2
        keys = ("pullback_xt_purity", "pullback_h_coverage", "mrtl_over_floor", "rank_iso_t50")
        keys += (("linear_xT_linearity", "linear_h_additivity_error", "probe_r2", "fd_oracle") if run["data"] == "shapes"
                 else ("probe_class_accuracy", "fd_classifier", "classifier_confident_fraction"))
        for key in keys:
            assert math.isfinite(run["metrics"][key]), (name, key)
        assert 0 < run["metrics"]["pullback_xt_purity"] <= 1
        reader = "oracle" if run["data"] == "shapes" else "classifier"  # which network read it, and how well
        saved = json.load(open(tmp / reader / f"{reader}.json"))
        assert run["reader"] == {"path": str(tmp / reader), "held_out": saved["held_out"]}
        assert run["metrics"]["rank_iso_t50"] >= 1.0  # rank·E tr(A²) / (E tr A)² ≥ 1 (Cauchy–Schwarz)
        if run["data"] == "digits":
            for share in ("probe_class_accuracy", "classifier_confident_fraction"):
                assert 0 <= run["metrics"][share] <= 1, (name, share)


def test_the_summary_is_the_arithmetic_of_the_run_records(study):
    """Known answers: with one seed each mean is its record's value, the difference theirs, and
    there is no standard error (several seeds: test_study_tables.py, on records)."""
    _, _, summary, tmp, _, _, _ = study
    record = lambda name: json.load(open(tmp / "results" / f"{name}.json"))["metrics"]
    for data, metric in (("shapes", "pullback_xt_purity"), ("shapes", "mrtl_over_floor"), ("shapes", "probe_r2"),
                         ("shapes", "linear_xT_linearity"), ("digits", "probe_class_accuracy")):
        zero, reg = record(f"{data}_scratch_lam0_seed0")[metric], record(f"{data}_scratch_lam1_seed0")[metric]
        stats = summary[data][metric]
        assert stats["seeds"] == 1 and math.isnan(stats["difference_se"]) and math.isnan(stats["detectable"])
        assert (stats["lambda0"], stats["regularized"]) == (zero, reg)
        assert stats["difference"] == pytest.approx(reg - zero, rel=1e-12, abs=1e-15)


def test_the_controls_give_their_known_answers_under_the_quick_protocol(study):
    """The positive controls (factors on axes, rotated) beat the negative one (a nonlinear mix) on
    the measures that pass their controls (docs/results.md §6), at the test's small sizes."""
    script, _, summary, tmp, _, _, _ = study
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


def test_a_run_measured_later_compiles_nothing_and_a_rerun_measures_nothing(study):
    script, argv, summary, tmp, _, compiles, _ = study
    assert compiles == 0  # LATE measured by the evaluators its pair's first run built: nothing compiled
    late = json.load(open(tmp / "results" / f"{LATE}.json"))
    rerun = script.main(argv)  # every record exists: nothing trains, nothing is measured
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # one seed: NaN errors
    assert same(rerun["shapes"], summary["shapes"]) and same(rerun["digits"], summary["digits"])
    assert json.load(open(tmp / "results" / f"{LATE}.json")) == late


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
