"""experiments/base_model.py at its smallest setting: trains an oracle and the base model a few
steps, scores the samples, writes the summary and the sample grid, and resumes without redoing."""
import json
import math

import pytest
from support import load_module


pytestmark = pytest.mark.slow  # trains a base model


def _script():
    return load_module("experiments/base_model.py")


def test_base_model_quick_run_writes_scores_and_resumes(tmp_path):
    script = _script()
    # the test config (its steps are compiled for other tests too), not shapes16's larger U-Net
    argv = ["--quick", "--config", "configs/test.py", "--out", str(tmp_path / "base"),
            "--oracle", str(tmp_path / "oracle")]
    summary = script.main(argv)
    scores = summary["scores"]
    assert scores["step"] == 4 and 0 <= scores["oracle_confident_fraction"] <= 1
    assert all(math.isfinite(scores[k]) for k in ("fd_oracle", "fd_oracle_real_vs_real"))
    assert json.load(open(tmp_path / "base" / "summary.json"))["scores"] == scores
    assert (tmp_path / "base" / "samples.png").stat().st_size > 100
    again = script.main(argv)  # finished: nothing retrained, the score kept
    assert again["scores"] == scores and again["training_seconds_this_call"] < summary["training_seconds_this_call"]
