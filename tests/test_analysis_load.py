"""Loading a training workdir for analysis (spec, EMA or raw parameters), evaluators built once,
and the analysis command."""
import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import fill

from isodiff_jax.analysis import load, suite
from isodiff_jax.analysis.options import Options


pytestmark = pytest.mark.slow  # a trained workdir and every evaluator compiled


CLI_OPTIONS = ["--num_pairs", "4", "--num_samples", "8", "--timesteps", "50,90", "--sample_steps", "4", "--pool", "2"]


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return trained_workdir


def test_loads_newest_ema_parameters_by_default(workdir):
    spec, params, step = load.load(workdir)
    raw = load.load(workdir, ema=False).params
    assert step == 4 and spec.image_shape == (16, 16, 3)
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(raw))
    assert any(not np.array_equal(a, b) for a, b in leaves)  # EMA differs from the raw parameters
    x = jnp.zeros((2, 16, 16, 3))
    t = jnp.array([10, 90], jnp.int32)
    assert spec.eps(params, x, t).shape == (2, 16, 16, 3)
    assert spec.encode(params, x, t).shape == (2, 8, 8, 32)


def test_loads_a_given_step_on_one_device_without_the_optimizer_state(workdir):
    spec, params, step = load.load(workdir, step=2, devices=jax.devices()[:1])
    assert step == 2 and set(params) == {"params"}
    assert jax.tree.structure(params) == jax.tree.structure(spec.abstract_params())
    assert all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree.leaves(params))
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
        load.load(workdir, step=3)


def test_training_ran_the_configured_evaluators(workdir):
    import json
    lines = [json.loads(line) for line in open(f"{workdir}/evaluation.jsonl")]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        assert line["mrtl"] >= 1.0 and line["mrtl"] == line["mrtl_t50"]
        assert -10 < line["probe_r2"] <= 1 and 0 <= line["probe_shape_accuracy"] <= 1
    # the evaluators saw the (sharded) EMA parameters of their step: the checkpoint's, evaluated again
    spec, params, _ = load.load(workdir, step=2, devices=jax.devices()[:1])
    options = Options(num_pairs=4, sample_steps=4, timesteps=(50,), seed=0)
    again = dict(suite.Suite(spec, ["mrtl"], options).run(params))
    assert again["mrtl"] == pytest.approx(lines[0]["mrtl"], rel=1e-5)


def test_a_second_evaluation_on_new_parameters_compiles_nothing(workdir, count_compiles):
    spec, params_2, _ = load.load(workdir, step=2)
    params_4 = load.load(workdir, step=4).params
    # the options of the CLI test below, whose programs then come from the persistent cache
    options = Options(num_pairs=4, num_samples=8, sample_steps=4, timesteps=(50, 90), pool=2)
    evaluators = suite.Suite(spec, ["mrtl", "mcn", "ppl", "inversion", "probe"], options)
    pictures = suite.Interpolation(spec, options)
    first = dict(itertools.chain(evaluators.run(params_2), pictures.measure(params_2).pictures.items()))
    with count_compiles() as counter:
        second = dict(itertools.chain(evaluators.run(params_4), pictures.measure(params_4).pictures.items()))
    assert counter.count == 0
    assert second.keys() == first.keys() and second["mrtl"] != first["mrtl"]
    assert second["t50_mcn"] != first["t50_mcn"] and second["probe_r2"] != first["probe_r2"]


def test_mcn_at_pure_noise_as_the_original_code_measures(workdir):
    spec, params, _ = load.load(workdir)
    options = Options(num_samples=8, timesteps=(50,), pool=2)
    values = {mode: dict(suite.Suite(spec, ["mcn"], dataclasses.replace(options, mcn_input=mode)).run(params))
              for mode in ("noised_data", "noise")}
    assert all(v["t50_mcn"] >= 1 and v["t50_mcn_is_lower_bound"] in (0.0, 1.0) for v in values.values())
    assert values["noise"]["t50_mcn"] != values["noised_data"]["t50_mcn"]
    with pytest.raises(ValueError, match="mcn_input"):
        Options(mcn_input="gaussian")


def test_not_a_workdir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        load.load(str(tmp_path))


def test_cli_writes_metrics_and_pictures_and_compares(workdir, tmp_path, count_compiles):
    import json
    import shutil
    from isodiff_jax.analysis import cli
    other = tmp_path / "other_run"
    shutil.copytree(workdir, other)
    for path in other.glob("checkpoints/*/spec/metadata"):  # another run of a seed sweep
        values = json.loads(path.read_text())
        values["data"]["seed"] = 7
        path.write_text(json.dumps(values))
    options = CLI_OPTIONS
    cli.main(["--workdir", workdir, "--out", str(tmp_path / "one"), *options])
    report = json.load(open(tmp_path / "one" / "metrics.json"))
    m = report["metrics"]
    assert report["step"] == 4 and m["mrtl"] >= 1.0 and m["t50_mcn"] >= 1.0 and m["t90_vor"] >= 0
    assert m["ppl_pixel_l2"] > 0 and np.isfinite(m["inversion_psnr"])
    for name in ("interpolation.png", "rtl_histogram.png", "spectra.png", "inversion.png"):
        assert (tmp_path / "one" / name).stat().st_size > 1000, name
    with count_compiles() as one:
        cli.main(["--workdir", workdir, "--out", str(tmp_path / "mrtl"), "--metrics", "mrtl", *options])
    with count_compiles() as both:  # the seed sweep shares every evaluator: nothing compiles twice
        cli.main(["--compare", workdir, str(other), "--out", str(tmp_path / "cmp"), "--metrics", "mrtl", *options])
    assert abs(both.count - one.count) <= 2, (one.count, both.count)
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| metric |" in table and "mrtl_t90" in table and "other_run" in table
    assert (tmp_path / "cmp" / "interpolation_side_by_side.png").exists()


def test_cli_on_a_full_disk_keeps_the_numbers_and_says_so_in_one_line(workdir, small_disk, capsys):
    """Room for metrics.json (one 4 kB page of the tmpfs) but not the pictures: status 1, one
    line, and metrics.json complete (hardening issue, case 7)."""
    import json
    from isodiff_jax.analysis import cli
    fill(small_disk, leave=4096)
    out = small_disk / "analysis"
    with pytest.raises(SystemExit) as exit:
        cli.main(["--workdir", workdir, "--out", str(out), "--metrics", "mrtl", *CLI_OPTIONS])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    assert exit.value.code == 1 and lines == [f"error: the disk is full (No space left on device): {out / 'metrics.json'} "
                                              f"holds every number, but some pictures are missing. Free some space "
                                              f"and run the same command again"], lines
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["mrtl"] >= 1.0 and report["pictures"] == []
    assert sorted(os.listdir(out)) == ["metrics.json"]  # no half-written picture


def input_error(capsys, argv) -> str:
    """Runs the analysis command, which must stop with status 2 and one line `error: ...`."""
    from isodiff_jax.analysis import cli
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING:absl:")]
    assert exit.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_refuses_an_out_that_is_a_file_at_once(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text("earlier results")
    line = input_error(capsys, ["--workdir", str(tmp_path / "not_read_yet"), "--out", str(results)])
    assert line == f"error: --out {results} is an existing file: give a directory (it is created if missing)"
    assert results.read_text() == "earlier results"


def test_cli_checks_its_inputs_against_the_model_before_any_work(workdir, tmp_path, capsys, count_compiles,
                                                                  monkeypatch):
    monkeypatch.delenv("ISODIFF_TRACEBACK", raising=False)
    out = tmp_path / "out"
    run = ["--workdir", workdir, "--out", str(out), "--timesteps", "50"]
    with count_compiles() as counter:
        for timesteps in ("50,100", "500,700,900"):  # the test model has T = 100
            line = input_error(capsys, [*run, "--timesteps", timesteps])
            assert line == (f"error: timesteps={timesteps} is invalid for a model of T = 100 timesteps: "
                            f"allowed timesteps in [0, 100)")
        line = input_error(capsys, [*run, "--timesteps=50,-5"])
        assert line == "error: timesteps=50,-5 is invalid: allowed values >= 0"
        assert input_error(capsys, [*run, "--pool", "0"]) == "error: pool=0 is invalid: allowed values >= 1"
        assert "no checkpoint for step 3" in input_error(capsys, [*run, "--step", "3"])
        assert "is not a training workdir" in input_error(capsys, [*run, "--workdir", str(tmp_path / "none")])
        assert "unknown metrics ['fid']" in input_error(capsys, [*run, "--metrics", "mrtl,fid"])
        (tmp_path / "file").write_text("")
        line = input_error(capsys, [*run, "--metrics", "mrtl", "--out", str(tmp_path / "file" / "out")])
        assert line == f"error: --out {tmp_path / 'file' / 'out'} cannot be created: Not a directory"
    assert counter.count == 0 and not out.exists()
    from isodiff_jax.analysis import cli
    with pytest.raises(ValueError, match="allowed timesteps in"):  # --traceback: the error itself
        cli.main([*run, "--timesteps", "100", "--traceback"])


def test_every_cli_flag_has_help():
    from isodiff_jax.analysis import cli, options
    flags = [action for action in cli._parser()._actions if action.option_strings]
    assert {f"--{field.name}" for field in options.fields()} <= {s for a in flags for s in a.option_strings}
    assert [a.option_strings for a in flags if not (a.help or "").strip()] == []
