"""The study scripts refuse bad input in one line, before they create or train anything
(hardening issue, cases 6 and 11), and never replace a summary with one that holds fewer runs."""
import json

import pytest
from support import load_module

from isodiff_jax import storage


@pytest.fixture(scope="module")
def study():
    return load_module("experiments/disentanglement.py")


@pytest.mark.parametrize("flag, value, message", [
    ("--seeds", "-1", "-1 in '-1' is not one of seeds"),
    ("--seeds", "abc", "'abc' is not a comma-separated list of seeds"),
    ("--digits_seeds", "0,2147483648", "2147483648 in '0,2147483648' is not one of seeds"),
    ("--finetune_lambdas", "0,nan", "nan in '0,nan' is not one of weights"),
])
def test_a_bad_list_is_one_argparse_line_and_creates_nothing(study, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit:
        study.main([flag, value, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_measure_only_with_nothing_trained_stops_before_training_the_oracle(study, tmp_path):
    with pytest.raises(SystemExit, match="none of the 2 runs is trained to --steps=1000"):
        study.main(["--measure_only", "--seeds", "0", "--digits_seeds", "", "--out", str(tmp_path / "runs"),
                    "--results", str(tmp_path / "results"), "--oracle", str(tmp_path / "oracle"),
                    "--classifier", str(tmp_path / "classifier")])
    assert not (tmp_path / "oracle").exists() and not (tmp_path / "classifier").exists()


@pytest.mark.parametrize("entry", [lambda name: name, lambda name: {"name": name, "metrics": {}}])
def test_a_summary_with_fewer_runs_is_written_beside_the_one_there(tmp_path, caplog, entry):
    """The rule of every study's summary (storage.write_results): runs as names (disentanglement)
    or records with a name (the λ and regularizer studies)."""
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"runs": [entry(n) for n in "abc"]}))
    written = storage.write_results(str(path), {"runs": [entry("a")]})
    assert written.endswith("summary.partial.json") and json.loads(path.read_text())["runs"] == [entry(n) for n in "abc"]
    assert "2 runs of the results there are not in these (b, c)" in caplog.text
    assert json.loads((tmp_path / "summary.partial.json").read_text())["runs"] == [entry("a")]
    assert storage.write_results(str(path), {"runs": [entry(n) for n in "abcd"]}) == str(path)  # more: replaces it
    assert json.loads(path.read_text())["runs"] == [entry(n) for n in "abcd"]
