"""experiments/regularizer_study.py at its smallest setting: λ = 0 and each regularizer at one
weight, fine-tuned from a trained workdir, measured, compared, and skipped when run again."""
import json
import math

from support import load_module

from isodiff_jax.analysis import oracle


def test_regularizer_study_quick_run_compares_kinds_and_resumes(trained_workdir, oracle16, tmp_path):
    oracle.save(oracle16, str(tmp_path / "oracle"), {})
    script = load_module("experiments/regularizer_study.py")
    argv = ["--quick", "--config", "configs/test.py", "--base", trained_workdir, "--oracle", str(tmp_path / "oracle"),
            "--steps", "2", "--weights", "0.1", "--kinds", "euclidean,path_length", "--out", str(tmp_path / "study")]
    summary = script.main(argv)
    names = [r["name"] for r in summary["runs"]]
    assert names == ["lam0_p0.5", "euclidean_lam0.1_p0.5", "path_length_lam0.1_p0.5"]
    assert [r["kind"] for r in summary["runs"]] == ["none", "euclidean", "path_length"]
    for run in summary["runs"]:
        assert run["step"] == 2
        for name in ("mrtl_over_floor", "fd_oracle", "oracle_confident_fraction", "rank_iso_t50"):
            assert math.isfinite(run["metrics"][name]), (run["name"], name)
    # a kind is compared at its best weight only if it keeps sample quality (within 5 points)
    zero = summary["runs"][0]["metrics"]["oracle_confident_fraction"]
    for run in summary["runs"][1:]:
        keeps = run["metrics"]["oracle_confident_fraction"] >= zero - 0.05
        assert (summary["best_weight"][run["kind"]] == 0.1) == keeps
    assert summary["side_by_side"][0] == "lam0_p0.5"
    assert (tmp_path / "study" / "regularizers.png").exists()
    saved = json.load(open(tmp_path / "study" / "regularizers.json"))
    again = script.main(argv)  # finished: every measured.json is reused, nothing trains
    assert again["runs"] == saved["runs"]
