"""experiments/lambda_study.py and experiments/regularizer_study.py at their smallest settings:
runs fine-tuned from a trained workdir, measured with every evaluator, summarised, compared, and
skipped when run again. The regularizer study shares the λ study's directory and reuses its runs."""
import json
import math
import os

import numpy as np
import pytest
from support import ROOT, load_module

from isodiff_jax.analysis.networks import oracle


pytestmark = pytest.mark.slow  # the λ study's smallest setting: several training runs


@pytest.fixture(scope="module")
def study(trained_workdir, oracle16, tmp_path_factory):
    """The λ study's quick setting with λ ∈ {0, 0.1}: (argv, summary, out directory, the
    evaluators it built, which the regularizer study reuses)."""
    tmp = tmp_path_factory.mktemp("lambda")
    oracle.save(oracle16, str(tmp / "oracle"), {})
    argv = ["--quick", "--config", "configs/test.py", "--base", trained_workdir, "--oracle", str(tmp / "oracle"),
            "--steps", "2", "--lambdas", "0,0.1", "--no-scratch", "--p_values", "", "--out", str(tmp / "study")]
    measurers = {}
    return argv, load_module("experiments/lambda_study.py").main(argv, measurers), tmp, measurers


def test_lambda_study_quick_run_measures_and_resumes(study):
    argv, summary, tmp, measurers = study
    assert len(measurers) == 1  # both runs measured by one set of evaluators
    assert [r["name"] for r in summary["runs"]] == ["lam0_p0.5", "lam0.1_p0.5"]
    for run in summary["runs"]:
        assert run["step"] == 2
        for name in ("mrtl", "mrtl_over_floor", "fd_oracle", "inversion_psnr", "factor_rtl", "edit_h_precision",
                     "probe_r2", "rank_iso_t50", "t50_mcn"):
            assert math.isfinite(run["metrics"][name]), (run["name"], name)
        assert run["metrics"]["rank_iso_t50"] >= 1.0 and run["trajectory"]
    zero, regularized = (r["metrics"]["oracle_confident_fraction"] for r in summary["runs"])
    assert summary["best_lambda"] == (0.1 if regularized >= zero - 0.05 else None)  # the study's rule
    assert (tmp / "study" / "mrtl_vs_lambda.png").exists() and (tmp / "study" / "fd_vs_lambda.png").exists()
    saved = json.load(open(tmp / "study" / "lam0.1_p0.5" / "measured.json"))
    again = load_module("experiments/lambda_study.py").main(argv)  # finished: measured.json reused, nothing trains
    assert again["runs"][1] == saved


def test_regularizer_study_reuses_the_lambda_runs_and_compares_kinds(study):
    argv, _, tmp, measurers = study
    script = load_module("experiments/regularizer_study.py")
    argv = ["--quick", "--config", "configs/test.py", "--base", argv[argv.index("--base") + 1],
            "--oracle", str(tmp / "oracle"), "--steps", "2", "--weights", "0.1", "--kinds", "sphere,path_length",
            "--out", str(tmp / "study")]
    reused = json.load(open(tmp / "study" / "lam0.1_p0.5" / "measured.json"))
    built = dict(measurers)
    summary = script.main(argv, measurers)
    assert measurers == built  # the new run was measured by the λ study's evaluators
    assert [r["name"] for r in summary["runs"]] == ["lam0_p0.5", "lam0.1_p0.5", "path_length_lam0.1_p0.5"]
    assert [r["kind"] for r in summary["runs"]] == ["none", "sphere", "path_length"]
    assert summary["runs"][1] == reused  # not trained again
    path_length = summary["runs"][2]
    assert path_length["step"] == 2
    for name in ("mrtl_over_floor", "fd_oracle", "oracle_confident_fraction", "rank_iso_t50"):
        assert math.isfinite(path_length["metrics"][name]), name
    zero = summary["runs"][0]["metrics"]["oracle_confident_fraction"]
    for run in summary["runs"][1:]:  # a kind's best weight must keep sample quality within 5 points
        keeps = run["metrics"]["oracle_confident_fraction"] >= zero - 0.05
        assert (summary["best_weight"][run["kind"]] == 0.1) == keeps
    assert summary["side_by_side"][0] == "lam0_p0.5" and (tmp / "study" / "regularizers.png").exists()
    saved = json.load(open(tmp / "study" / "regularizers.json"))
    assert script.main(argv)["runs"] == saved["runs"]  # finished: nothing trains


def test_the_trend_of_rank_iso_is_read_from_its_noise():
    """Growing or falling only when the slope over the second half is more than twice its
    standard error; the committed λ study runs: λ = 0 wanders (flat), λ = 1e-2 falls."""
    trend = load_module("experiments/lambda_study.py").trend
    steps = np.arange(50, 1001, 50)
    noise = np.random.default_rng(0).normal(0.0, 0.3, steps.shape)
    points = lambda values: list(zip(steps.tolist(), values.tolist()))
    assert trend(points(20 + noise)) == "flat"
    assert trend(points(20 + 0.004 * steps + noise)) == "growing"
    assert trend(points(20 - 0.004 * steps + noise)) == "falling"
    assert trend(points(20 + 0.004 * steps)[:4]) == "flat"  # 2 points in the second half: no estimate
    assert trend([(1, 2.0), (2, 2.0), (3, 2.0), (4, 2.0), (5, 2.0), (6, 2.0)]) == "flat"
    assert trend([]) == "not logged"  # path_length runs: their step has no rank·L_iso
    committed = lambda lam: json.load(open(os.path.join(ROOT, "experiments", "results", "lambda",
                                                        f"lam{lam}_p0.5.json")))["trajectory"]
    assert trend(committed("0")) == "flat" and trend(committed("0.01")) == "falling"
