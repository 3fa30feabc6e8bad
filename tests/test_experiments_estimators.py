"""experiments/estimator_accuracy.py at its smallest setting (random-init test model): finite numbers,
estimates centred on the exact traces, spreads as the closed forms say, the dense Jacobian agreeing
with the network, and a re-run that resumes without redoing anything."""
import json
import math
import os

import pytest
from support import json_numbers, load_module


pytestmark = pytest.mark.slow  # the estimator study: many compiled estimators


@pytest.fixture(scope="module")
def study():
    return load_module("experiments/estimator_accuracy.py")


def test_quick_study_is_accurate_finite_and_resumes(study, tmp_path, capsys):
    out = str(tmp_path / "estimators")
    argv = ["--quick", "--workdir", "", "--out", out]
    summary = study.main(argv)
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)
    numbers = json_numbers({k: v for k, v in saved.items() if k != "model"})  # model: step is None
    assert numbers and all(math.isfinite(n) for n in numbers)
    assert os.path.getsize(os.path.join(out, saved["picture"])) > 1000
    assert "Recommended defaults" in saved["recommendation"]

    (t,) = saved["settings"]["timesteps"]
    result = saved["results"][str(t)]
    check = result["exact"]["check"]  # the dense linearization is the network's, to float32 rounding
    assert max(check[k] for k in check if k != "samples") < 1e-4
    for estimator in study.ESTIMATORS:
        setting = result[estimator]["1"]
        for trace in ("tr_r", "tr_r2"):  # unbiased: the mean of the draws sits on the exact value
            assert abs(setting[trace]["z_of_mean"]) < 5, (estimator, trace, setting[trace])
            ratio = setting[trace]["rel_std"] / setting["theory"][f"{trace}_rel_std"]
            assert 0.5 < ratio < 2.0, (estimator, trace, ratio)
        assert setting["loss"]["rel_std"] > 0 and setting["small_batch"]["groups"] == 2
    assert saved["cost"]["jvp_vjp"]["1"]["median_s"] > 0 and saved["efficiency"]["jvp_vjp_K1"]["relative"] == 1.0

    parts = sorted(os.listdir(os.path.join(out, "parts")))
    assert len(parts) == 1 + 2 + 3  # exact, 2 estimators, 3 costs
    mtimes = {p: os.path.getmtime(os.path.join(out, "parts", p)) for p in parts}
    capsys.readouterr()
    again = study.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(parts) and "finished in" not in printed
    assert mtimes == {p: os.path.getmtime(os.path.join(out, "parts", p)) for p in parts}
    assert again["results"] == summary["results"] and again["cost"] == summary["cost"]
    with pytest.raises(SystemExit, match="other settings"):
        study.main(argv + ["--repeats", "8"])
