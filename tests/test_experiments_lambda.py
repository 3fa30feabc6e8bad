"""experiments/lambda_study.py at its smallest setting: one fine-tuned run from a trained workdir,
measured with every evaluator, summarised, and skipped when run again."""
import json
import math

from support import load_module

from isodiff_jax.analysis import oracle


def _script():
    return load_module("experiments/lambda_study.py")


def test_lambda_study_quick_run_measures_and_resumes(trained_workdir, oracle16, tmp_path):
    oracle.save(oracle16, str(tmp_path / "oracle"), {})
    script = _script()
    argv = ["--quick", "--config", "configs/test.py", "--base", trained_workdir, "--oracle", str(tmp_path / "oracle"),
            "--steps", "2", "--lambdas", "0.1", "--no-scratch", "--p_values", "", "--out", str(tmp_path / "study")]
    summary = script.main(argv)
    (run,) = summary["runs"]
    assert run["name"] == "lam0.1_p0.5" and run["step"] == 2
    for name in ("mrtl", "mrtl_over_floor", "fd_oracle", "inversion_psnr", "factor_rtl", "edit_h_precision",
                 "probe_r2", "rank_iso_t50", "t50_mcn"):
        assert math.isfinite(run["metrics"][name]), name
    assert run["metrics"]["rank_iso_t50"] >= 1.0 and run["trajectory"]
    assert summary["best_lambda"] is None  # no λ = 0 run to compare with
    assert (tmp_path / "study" / "mrtl_vs_lambda.png").exists()
    saved = json.load(open(tmp_path / "study" / "lam0.1_p0.5" / "measured.json"))
    again = script.main(argv)  # finished: measured.json is reused, nothing trains
    assert again["runs"][0] == saved
